"""A run survives kills, refuses a second run on the same folder, and isolates failing trials."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from dropbench.harness.errors import DropbenchError
from dropbench.harness.lock import FolderLock

PLUGIN_RAISES = '''
from dropbench.variants import STEP, Variant

def broken_step(x_proj, h, c, recurrent, cell_mask):
    raise RuntimeError("this plugin is broken")

BROKEN = Variant(name="broken", description="raises in its cell step", masks={"input": STEP}, p={"input": 0.1}, cell_step=broken_step)
'''


def dropbench(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dropbench.harness.cli", *args], capture_output=True, text=True, **kwargs)


def test_second_lock_on_a_folder_is_refused_and_names_the_owner(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(DropbenchError, match=rf"in use by another dropbench run \(pid {os.getpid()}"):
            with FolderLock(tmp_path):
                pass
    with FolderLock(tmp_path):  # released: free again
        pass


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"from dropbench.harness.lock import FolderLock; import time\nwith FolderLock({str(tmp_path)!r}): print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DropbenchError, match=f"pid {holder.pid}"):
        with FolderLock(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with FolderLock(tmp_path):
        pass


def test_failing_plugin_is_recorded_and_the_suite_goes_on(tmp_path, data_dir):
    plugin = tmp_path / "broken.py"
    plugin.write_text(PLUGIN_RAISES)
    suite = tmp_path / "mixed.toml"
    suite.write_text('''
[[experiment]]
task = "ptb"
variants = ["broken", "zaremba"]
hidden_size = 8
num_layers = 1
epochs = 1
train_tokens = 2000
valid_tokens = 500
test_tokens = 500
test_batch_size = 5
''')
    result = dropbench("run", str(suite), "--plugin", str(plugin), "--out", str(tmp_path / "out"), "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 1
    assert "1 done, 1 failed" in result.stdout
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("variant")
    assert results.loc["broken", "status"] == "failed" and results.loc["zaremba", "status"] == "done"
    error = sqlite3.connect(tmp_path / "out" / "results.sqlite").execute("SELECT error FROM trials WHERE variant = 'broken'").fetchone()[0]
    assert "Traceback" in error and "this plugin is broken" in error


def test_diverging_trial_is_recorded_with_its_epoch(tmp_path, data_dir):
    result = dropbench("run", "smoke", "--only", "none", "--out", str(tmp_path), "--data-dir", str(data_dir), "--no-progress",
                       "--set", "lr=1e30", "--set", "max_grad_norm=0.0", "--set", "epochs=2")
    assert result.returncode == 0, result.stderr
    results = pd.read_csv(tmp_path / "results.csv")
    ptb = results[results.task == "ptb"].iloc[0]
    assert ptb["status"] == "diverged" and ptb["epochs_run"] == 1
    assert "NaN or inf in epoch 1" in ptb["error"]


def test_corrupt_checkpoint_restarts_that_trial_and_says_so(tmp_path, data_dir, registry):
    from dropbench.harness.config import expand, load_suite
    from dropbench.harness.train import Progress, run_trial

    trial = next(t for t in expand(load_suite("smoke"), registry, only=["zaremba"], overrides={"device": "cpu", "epochs": 1}) if t.config["task"] == "ptb")
    clean = run_trial(trial.config, registry["zaremba"], data_dir)
    checkpoint = tmp_path / "trial.pt"
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    notes = []
    again = run_trial(trial.config, registry["zaremba"], data_dir, checkpoint, Progress(note=notes.append))
    assert notes and "corrupt or truncated" in notes[0] and "afresh" in notes[0]
    assert again.metrics["test_ppl"] == clean.metrics["test_ppl"]


SLOW_SUITE = '''
seeds = 2
[[experiment]]
task = "ptb"
variants = ["variational-tied", "zaremba"]
hidden_size = 16
num_layers = 1
epochs = 4
bptt = 10
train_tokens = 12000
valid_tokens = 1000
test_tokens = 1000
test_batch_size = 5
mc_samples = 2
'''


@pytest.mark.parametrize("kill_after", [1.5, 4.0, 7.0])
def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_results(tmp_path, data_dir, kill_after):
    suite = tmp_path / "slow.toml"
    suite.write_text(SLOW_SUITE)
    common = ["--data-dir", str(data_dir), "--no-progress", "--device", "cpu"]
    reference = dropbench("run", str(suite), "--out", str(tmp_path / "reference"), *common)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "dropbench.harness.cli", "run", str(suite), "--out", str(out), *common],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = dropbench("run", str(suite), "--out", str(out), *common)
    assert resumed.returncode == 0, resumed.stderr
    columns = ["trial_id", "status", "epochs_run", "val_ppl", "test_ppl", "test_ppl_mc"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[columns], pd.read_csv(tmp_path / "reference" / "results.csv")[columns])


def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = dropbench("run", "smoke", "--device", "cuda", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--device cuda" in result.stderr and "use --device cpu or auto" in result.stderr


def test_unwritable_output_folder_is_a_clear_error(tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = dropbench("run", "smoke", "--out", str(blocker / "out"), "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write to output folder" in result.stderr and "--out" in result.stderr


def test_missing_data_names_the_fetch_command(tmp_path):
    result = dropbench("run", "smoke", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "empty"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dropbench data fetch ptb" in result.stderr and result.stderr.count("\n") == 1


def test_ctrl_c_stops_cleanly_after_saving_and_the_rerun_finishes(tmp_path, data_dir):
    suite = tmp_path / "slow.toml"
    suite.write_text(SLOW_SUITE)
    out = tmp_path / "out"
    common = ["--out", str(out), "--data-dir", str(data_dir), "--no-progress", "--device", "cpu"]
    # A background job of a shell (CI, nohup) inherits SIGINT ignored, and so would the child: it
    # gets the default back, so that Ctrl-C reaches it as it does from a terminal.
    process = subprocess.Popen([sys.executable, "-m", "dropbench.harness.cli", "run", str(suite), *common],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "curves.csv").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    statuses = pd.read_csv(out / "results.csv")["status"]
    assert "running" not in set(statuses)
    resumed = dropbench("run", str(suite), *common)
    assert resumed.returncode == 0
    assert (pd.read_csv(out / "results.csv")["status"] == "done").all()
