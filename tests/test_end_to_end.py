"""The smoke suite end to end through the CLI, determinism, and resuming a finished folder."""

import json
import math
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from dropbench.harness.config import expand, load_suite
from dropbench.harness.train import run_trial

RESULT_COLUMNS = ["suite", "task", "variant", "seed", "status", "epochs_run", "val_ppl", "test_ppl", "test_ppl_mc",
                  "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "wall_s"]


def dropbench(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dropbench.harness.cli", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("smoke")
    result = dropbench("run", "smoke", "--out", str(out), "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result


def test_smoke_suite_runs_every_variant_and_stores_everything(smoke_run, registry):
    out, result = smoke_run
    results = pd.read_csv(out / "results.csv")
    assert set(RESULT_COLUMNS) <= set(results.columns)
    planned = expand(load_suite("smoke"), registry)
    assert len(results) == len(planned) and (results["status"] == "done").all()
    ptb = results[results.task == "ptb"].set_index("variant")
    assert set(ptb.index) == {"none", "zaremba", "moon", "moon-emb", "variational-tied", "variational-untied"}
    assert (ptb[["val_ppl", "test_ppl", "train_wps", "eval_wps"]] > 0).all().all()
    # perplexities are finite and far below the vocabulary size a uniform model would score
    assert (ptb["test_ppl"] < 10000).all()
    stochastic = ptb.drop(index="none")
    assert stochastic["test_ppl_mc"].notna().all() and pd.isna(ptb.loc["none", "test_ppl_mc"])
    sentiment = results[results.task == "sentiment"].set_index("variant")
    assert sentiment["test_rmse"].between(0.05, 1.0).all() and pd.isna(sentiment["val_ppl"]).all()
    assert pd.isna(sentiment.loc["none", "test_rmse_mc"]) and sentiment.loc["variational-tied", "test_rmse_mc"] > 0


def test_curves_and_database_agree_with_the_csv(smoke_run):
    out, _ = smoke_run
    results, curves = pd.read_csv(out / "results.csv"), pd.read_csv(out / "curves.csv")
    assert len(curves) == results["epochs_run"].sum()
    db = sqlite3.connect(out / "results.sqlite")
    environment = json.loads(db.execute("SELECT environment FROM runs").fetchone()[0])
    assert environment["torch"] and environment["device"] == "cpu" and "git_commit" in environment
    for trial_id, val_ppl in db.execute("SELECT id, val_ppl FROM trials WHERE task = 'ptb' AND variant != 'none'"):
        last = curves[curves.trial_id == trial_id].sort_values("epoch").iloc[-1]
        assert last["val_ppl"] == pytest.approx(val_ppl)
    # per-sentence test losses reproduce the test perplexity
    for trial_id, test_ppl in db.execute("SELECT id, test_ppl FROM trials WHERE task = 'ptb'"):
        nll, count = db.execute("SELECT SUM(loss), SUM(count) FROM sample_losses WHERE trial_id = ? AND kind = 'det'", (trial_id,)).fetchone()
        assert test_ppl == pytest.approx(math.exp(nll / count))


def test_rerun_skips_finished_trials(smoke_run, data_dir):
    out, _ = smoke_run
    before = pd.read_csv(out / "results.csv")
    result = dropbench("run", "smoke", "--out", str(out), "--data-dir", str(data_dir), "--no-progress")
    assert result.returncode == 0
    after = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(before, after)


@pytest.mark.parametrize("variant", ["variational-untied", "moon-emb"])
def test_same_seed_gives_identical_results_on_cpu(registry, data_dir, variant):
    trial = next(t for t in expand(load_suite("smoke"), registry, only=[variant], overrides={"device": "cpu", "epochs": 1}) if t.config["task"] == "ptb")
    first = run_trial(trial.config, registry[variant], data_dir)
    second = run_trial(trial.config, registry[variant], data_dir)
    assert first.metrics["test_ppl"] == second.metrics["test_ppl"] and first.metrics["test_ppl_mc"] == second.metrics["test_ppl_mc"]
    other = run_trial({**trial.config, "seed": trial.config["seed"] + 1}, registry[variant], data_dir)
    assert other.metrics["test_ppl"] != first.metrics["test_ppl"]


def test_killed_trial_resumes_from_its_checkpoint_with_identical_results(registry, data_dir, tmp_path):
    trial = next(t for t in expand(load_suite("smoke"), registry, only=["variational-tied"], overrides={"device": "cpu", "epochs": 3}) if t.config["task"] == "ptb")
    variant = registry["variational-tied"]
    uninterrupted = run_trial(trial.config, variant, data_dir)
    checkpoint = tmp_path / "trial.pt"
    run_trial({**trial.config, "epochs": 1}, variant, data_dir, checkpoint)  # stands in for a run killed after epoch 1
    resumed = run_trial(trial.config, variant, data_dir, checkpoint)
    assert resumed.metrics["test_ppl"] == uninterrupted.metrics["test_ppl"]
    assert resumed.metrics["epochs_run"] == 3


def test_a_trial_killed_after_early_stopping_fired_stays_stopped_on_resume(registry, data_dir, tmp_path, monkeypatch):
    """The stopping epoch's checkpoint is written before the final test; a crash there must not
    make the resumed trial train on."""
    import dropbench.harness.train as train

    trial = next(t for t in expand(load_suite("smoke"), registry, only=["none"], overrides={
        "device": "cpu", "epochs": 12, "early_stopping_patience": 1, "lr": 8.0, "lr_decay_start": 100}) if t.config["task"] == "ptb")
    variant = registry["none"]
    uninterrupted = run_trial(trial.config, variant, data_dir)
    assert uninterrupted.metrics["epochs_run"] < 12, "the setting must make early stopping fire"

    real = train.lm_target_logprobs

    def crash_at_test(model, stream, streams, *args, **kwargs):
        if streams == trial.config["test_batch_size"] and len(stream) == trial.config["test_tokens"]:
            raise KeyboardInterrupt
        return real(model, stream, streams, *args, **kwargs)

    checkpoint = tmp_path / "trial.pt"
    monkeypatch.setattr(train, "lm_target_logprobs", crash_at_test)
    with pytest.raises(KeyboardInterrupt):
        run_trial(trial.config, variant, data_dir, checkpoint)
    monkeypatch.setattr(train, "lm_target_logprobs", real)
    resumed = run_trial(trial.config, variant, data_dir, checkpoint)
    assert resumed.metrics["epochs_run"] == uninterrupted.metrics["epochs_run"]
    assert resumed.metrics["test_ppl"] == uninterrupted.metrics["test_ppl"]
    assert resumed.metrics["val_ppl"] == uninterrupted.metrics["val_ppl"]


def test_per_epoch_mc_monitoring_does_not_change_training(registry, data_dir):
    trial = next(t for t in expand(load_suite("smoke"), registry, only=["variational-tied"], overrides={"device": "cpu", "epochs": 2})
                 if t.config["task"] == "sentiment")
    with_mc = run_trial(trial.config, registry["variational-tied"], data_dir)
    without = run_trial({**trial.config, "mc_samples_per_epoch": 0}, registry["variational-tied"], data_dir)
    assert with_mc.metrics["test_rmse"] == without.metrics["test_rmse"]


def test_a_run_with_populations_records_what_the_trials_reach_alone(tmp_path, data_dir):
    # lr 0.3: at the smoke suite's lr 1 a 16-unit model is chaotic enough that float32 rounding
    # alone moves its perplexity by percents (float64: equal to the last digit, test_population.py)
    results = {}
    for population in ("1", "4"):
        out = tmp_path / population
        result = dropbench("run", "smoke", "--out", str(out), "--data-dir", str(data_dir), "--no-progress", "--set", "lr=0.3",
                           "--population", population)
        assert result.returncode == 0, result.stderr
        results[population] = pd.read_csv(out / "results.csv").set_index("trial_id").sort_index()
    alone, together = results["1"], results["4"]
    assert (together["status"] == "done").all() and list(together.index) == list(alone.index)
    for column in ("val_ppl", "test_ppl", "test_ppl_mc", "test_rmse"):
        pd.testing.assert_series_equal(together[column], alone[column], rtol=1e-4)
    assert len(pd.read_csv(tmp_path / "4" / "curves.csv")) == len(pd.read_csv(tmp_path / "1" / "curves.csv"))


def test_population_size_below_one_is_refused(tmp_path, data_dir):
    result = dropbench("run", "smoke", "--out", str(tmp_path), "--data-dir", str(data_dir), "--population", "0")
    assert result.returncode == 2 and "--population must be at least 1" in result.stderr
