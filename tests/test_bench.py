"""`dropbench bench` end to end at a tiny size: what it writes, and that its ratios and FLOP
fractions follow from its own measurements."""

import json
import subprocess
import sys

import pytest

from dropbench.harness.cost import forward_flops_per_token
from dropbench.variants import load_registry


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "bench", "--size", "16x1", "--device", "cpu",
                           "--rounds", "3", "--no-progress", "--json", str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(path.read_text()), done.stdout


def test_every_variant_and_the_baseline_get_a_row(bench):
    result, printed = bench
    names = [row["variant"] for row in result["rows"]]
    assert sorted(names) == sorted([*load_registry(), "baseline-nn.LSTM"])
    for row in result["rows"]:
        assert row["train_wps"] > 0 and row["eval_wps"] > 0
        assert row["variant"] in printed
    assert [row["models"] for row in result["population"]] == [1, 2, 4, 8]


def test_ratios_and_peak_fractions_follow_from_the_measured_rates(bench):
    result, _ = bench
    baseline = next(row for row in result["rows"] if row["variant"] == "baseline-nn.LSTM")
    flops = forward_flops_per_token({"task": "ptb", "cell": "lstm", "hidden_size": 16, "embedding_size": 0, "num_layers": 1})
    assert result["flops_per_token_forward"] == flops
    for row in result["rows"]:
        for kind in ("train", "eval"):
            times, baseline_times = row[f"{kind}_step_seconds"], baseline[f"{kind}_step_seconds"]
            assert len(times) == len(baseline_times) == result["rounds"] == 3
            ratios = sorted(b / t for b, t in zip(baseline_times, times))
            assert row[f"{kind}_ratio_to_baseline"] == pytest.approx(ratios[1])  # the median of 3
            low, high = row[f"{kind}_ratio_quartiles"]
            assert ratios[0] <= low <= ratios[1] <= high <= ratios[2]
            assert row[f"{kind}_wps"] == pytest.approx(result["batch_size"] * result["bptt"] / sorted(times)[1])
        assert row["train_flops_fraction_of_peak"] == pytest.approx(row["train_wps"] * 3 * flops / result["matmul_peak_flops"])
        stochastic = row["variant"] != "baseline-nn.LSTM" and load_registry()[row["variant"]].stochastic
        assert ("mc_cost_in_deterministic_passes" in row) == stochastic
