"""The GPU script's rehearsal on the CPU: device time is scarce, so the script must not rot between
lent GPUs. Its correctness sections must hold on the CPU too (float32 against float64)."""

import json
import os
import subprocess
import sys


def test_gpu_check_rehearsal_runs_and_its_float32_checks_hold(tmp_path, data_dir):
    result = subprocess.run([sys.executable, "-m", "dropbench.harness.gpu_check", "--device", "cpu", "--tiny", "--budget", "300",
                             "--sections", "1,1b,5", "--out", str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "DROPBENCH_DATA": str(data_dir)})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    correctness = next(v for k, v in report.items() if k.startswith("1."))
    population = next(v for k, v in report.items() if k.startswith("1b."))
    precision = next(v for k, v in report.items() if k.startswith("5."))
    assert {row["mode"] for row in correctness} == {"fp32", "fp32-no-graphs"}
    assert len({row["variant"] for row in correctness}) == len(population) >= 7
    assert all(row["logits_rel_error"] < 1e-5 and row["grad_rel_error"] < 1e-5 for row in correctness + population)
    assert [row["precision"] for row in precision["same_weights"]] == ["fp32", "tf32", "bf16"]
    assert abs(precision["same_weights"][2]["val_change_percent"]) < 1.0
    assert not any(k.startswith(("2.", "3.", "4.", "6.", "7.")) for k in report)
