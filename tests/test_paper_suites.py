"""The paper suites resolve to the published setups (checked against the reference data, not the
TOML text), run when scaled down, and select the best validation grid cell."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from dropbench.harness.config import expand, load_suite
from dropbench.harness.reference import load_reference, paper_values, setup
from dropbench.harness.store import ResultStore
from dropbench.reports.export import results_frame

TABLE_ROWS = ["none", "moon", "moon-emb", "zaremba", "variational-tied", "variational-untied"]
SETUP_KEYS = ["hidden_size", "num_layers", "init_scale", "bptt", "batch_size", "lr", "lr_decay", "lr_decay_start", "epochs", "max_grad_norm"]


def resolved(name, registry, **kwargs):
    return expand(load_suite(name), registry, **kwargs)


@pytest.mark.parametrize("size", ["medium", "large"])
def test_ptb_table_suites_have_every_row_with_its_published_setup(registry, size):
    trials = resolved(f"paper-ptb-{size}", registry)
    reference = setup(f"ptb-{size}")
    assert {t.config["variant"] for t in trials} == set(TABLE_ROWS)
    variational = load_reference()["ptb"][size].get("variational", {})
    for trial in trials:
        config = trial.config
        expected = {key: reference[key] for key in SETUP_KEYS}
        if config["variant"].startswith("variational"):
            expected.update({k: v for k, v in variational.items() if k in expected or k == "weight_decay"})
        assert {key: config[key] for key in expected} == expected, (config["variant"], trial.grid_cell)
        assert config["test_batch_size"] == 1 and config["eval_batch_size"] == 20 and config["task"] == "ptb"
        assert trial.reference == f"ptb-{size}"
        if config["variant"] == "zaremba":
            assert config["p_input"] == config["p_output"] == reference["zaremba_p"]
        if config["variant"].startswith("variational"):
            assert config["mc_samples"] >= reference["mc_samples"] >= 1000
        if config["variant"] == "none":
            assert config["early_stopping_patience"] > 0 and config["mc_samples"] == 0
    seeds = {t.config["seed"] for t in trials}
    assert len(seeds) == 3


def test_large_variational_rows_use_the_authors_probabilities(registry):
    published = load_reference()["ptb"]["large"]["variational"]
    for trial in resolved("paper-ptb-large", registry, only=["variational-tied", "variational-untied"]):
        assert {k: trial.config[k] for k in ("p_embedding", "p_input", "p_recurrent", "p_output")} == \
            {k: published[k] for k in ("p_embedding", "p_input", "p_recurrent", "p_output")}


def test_unpublished_rows_are_grids_with_best_val_selection(registry):
    trials = resolved("paper-ptb-medium", registry)
    for variant in ("moon", "moon-emb", "variational-tied", "variational-untied"):
        mine = [t for t in trials if t.config["variant"] == variant]
        assert len({json.dumps(t.grid_cell, sort_keys=True) for t in mine}) >= 2
        assert all(t.select == "best_val" for t in mine)
    assert all(t.select == "" for t in trials if t.config["variant"] in ("none", "zaremba"))


def test_sentiment_suites(registry):
    settings = load_reference()["sentiment"]["setup"]
    trials = resolved("paper-sentiment", registry)
    assert {(t.config["cell"], t.config["variant"]) for t in trials} == {
        (cell, variant) for cell in ("lstm", "gru") for variant in ("variational-untied", "naive", "none")}
    for trial in trials:
        config = trial.config
        assert (config["hidden_size"], config["embedding_size"], config["batch_size"], config["optimizer"], config["weight_decay"]) == \
            (settings["hidden_size"], settings["embedding_size"], settings["batch_size"], settings["optimizer"], settings["weight_decay"])
        long_run = config["variant"] == "variational-untied" and config["cell"] == "lstm"
        assert config["epochs"] == (settings["epochs_variational_lstm"] if long_run else settings["epochs_other"])
        if config["variant"] != "none":
            assert config["p_input"] == config["p_recurrent"] == config["p_output"] == settings["p"]
            assert config["mc_samples"] == settings["mc_samples"] and config["mc_samples_per_epoch"] == settings["mc_samples_per_epoch"]
    grid = resolved("paper-sentiment-grid", registry)
    cells = {(t.config["p_recurrent"], t.config["p_embedding"]) for t in grid}
    assert {(u, e) for u in (0.0, 0.25, 0.5) for e in (0.0, 0.25, 0.5)} <= cells
    assert {(u, 0.5) for u in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)} <= cells and {(0.5, e) for e in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)} <= cells
    assert len(grid) == len(cells)  # shared cells run once


def test_reference_numbers_reach_the_results(tmp_path, registry):
    store = ResultStore(tmp_path / "results.sqlite")
    for position, trial in enumerate(resolved("paper-ptb-medium", registry, seeds=1)):
        store.register_trial(trial.id, position, trial.suite, trial.config, trial.grid_cell, trial.experiment, trial.select, trial.reference)
    frame = results_frame(store).drop_duplicates("variant").set_index("variant")
    assert frame.loc["zaremba", "paper_test_ppl"] == 82.7 and frame.loc["variational-untied", "paper_test_ppl_mc"] == 78.6
    assert frame.loc["none", "paper_val_ppl"] == paper_values("ptb-medium", "none")["paper_val_ppl"] == 121.1


def test_best_val_selection_keeps_one_cell_per_variant_and_seed():
    frame = pd.DataFrame({
        "suite": "s", "experiment": "e", "variant": ["a"] * 4 + ["b"] * 2 + ["c"],
        "seed": [1, 1, 2, 2, 1, 1, 1], "selection": ["best_val"] * 6 + [""],
        "status": ["done", "done", "done", "failed", "done", "done", "done"],
        "val_ppl": [90.0, 80.0, 70.0, None, 100.0, 100.5, 50.0],
    })
    from dropbench.reports.export import selected
    assert selected(frame).tolist() == [False, True, True, False, True, False, True]


@pytest.mark.parametrize("suite, data_limit", [
    ("paper-ptb-medium", ["train_tokens=700", "valid_tokens=200", "test_tokens=60", "mc_samples=2"]),
    ("paper-ptb-large", ["train_tokens=700", "valid_tokens=200", "test_tokens=60", "mc_samples=2"]),
    ("ptb-small", ["train_tokens=400", "valid_tokens=200", "test_tokens=60", "mc_samples=2"]),
    ("paper-sentiment", ["train_segments=32", "test_segments=16", "mc_samples=2", "mc_samples_per_epoch=2"]),
    ("paper-sentiment-grid", ["train_segments=32", "test_segments=16", "mc_samples=2", "mc_samples_per_epoch=2"]),
])
def test_scaled_down_paper_suites_finish(tmp_path, data_dir, suite, data_limit):
    sets = [arg for item in ["epochs=1", *data_limit] for arg in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "run", suite, "--seeds", "1", "--out", str(tmp_path),
                             "--data-dir", str(data_dir), "--no-progress", *sets], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    results = pd.read_csv(tmp_path / "results.csv")
    assert (results["status"] == "done").all()
    if suite.startswith("paper-ptb"):
        chosen = results[results["selected"]]
        assert chosen.groupby(["experiment", "variant", "seed"]).size().eq(1).all()
        assert results["paper_test_ppl"].notna().all()


def test_suites_command_lists_counts_and_costs(registry):
    out = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "suites", "--json"], capture_output=True, text=True, check=True).stdout
    listing = {row["name"]: row for row in json.loads(out)["suites"]}
    for name in ("quick", "smoke", "paper-ptb-medium", "paper-ptb-large", "paper-sentiment", "paper-sentiment-grid", "ptb-small"):
        assert listing[name]["trials"] == len(resolved(name, registry))
        assert listing[name]["cpu_hours"] > 0 and listing[name]["gpu_hours"] > 0 and listing[name]["description"]
    assert listing["paper-ptb-large"]["token_steps"] > listing["ptb-small"]["token_steps"] > listing["smoke"]["token_steps"]
    assert listing["paper-ptb-large"]["cpu_hours"] > listing["paper-ptb-medium"]["cpu_hours"] > listing["quick"]["cpu_hours"]
