"""Suites expand into fully resolved trials; bad input is one clear DropbenchError."""

import json
import subprocess
import sys

import pytest

from dropbench.harness.config import COMMON, TASK_DEFAULTS, expand, load_suite, parse_overrides, parse_suite
from dropbench.harness.errors import DropbenchError

ISSUE_KEYS = ["task", "variant", "cell", "seed", "hidden_size", "num_layers", "bptt", "batch_size", "epochs", "lr", "lr_decay",
              "lr_decay_start", "max_grad_norm", "init_scale", "weight_decay", "optimizer", "p_embedding", "p_input",
              "p_recurrent", "p_cell", "p_output", "mc_samples"]


def suite(text):
    import tomllib
    return parse_suite(tomllib.loads(text), "test.toml", "test")


BASIC = """
seeds = 2
[defaults]
hidden_size = 32
[[experiment]]
task = "ptb"
variants = ["none", "zaremba", "variational-tied"]
p_input = 0.4
[experiment.per_variant.zaremba]
p_output = 0.3
[experiment.grid]
p_recurrent = [0.1, 0.2]
"""


def test_expansion_is_variant_by_grid_cell_by_seed(registry):
    trials = expand(suite(BASIC), registry)
    # none and zaremba use no recurrent mask, so their two grid cells are one trial
    assert [(t.config["variant"], t.config["seed"], t.config["p_recurrent"]) for t in trials] == [
        ("none", 1, 0.0), ("none", 2, 0.0), ("zaremba", 1, 0.0), ("zaremba", 2, 0.0),
        ("variational-tied", 1, 0.1), ("variational-tied", 2, 0.1), ("variational-tied", 1, 0.2), ("variational-tied", 2, 0.2)]
    assert len({t.id for t in trials}) == len(trials)


def test_resolution_order_and_unused_slots(registry):
    trials = {(t.config["variant"], t.config["p_recurrent"], t.config["seed"]): t.config
              for t in expand(suite(BASIC), registry, overrides={"epochs": 3})}
    zaremba = trials[("zaremba", 0.0, 1)]
    assert zaremba["p_input"] == 0.4 and zaremba["p_output"] == 0.3 and zaremba["hidden_size"] == 32 and zaremba["epochs"] == 3
    tied = trials[("variational-tied", 0.2, 2)]
    assert tied["p_output"] == registry["variational-tied"].p["output"]  # variant default, not zaremba's override
    none = trials[("none", 0.0, 1)]
    assert all(none[k] == 0.0 for k in ("p_embedding", "p_input", "p_recurrent", "p_cell", "p_output"))
    assert none["early_stopping_patience"] > 0 and tied["early_stopping_patience"] == 0


def test_set_overrides_every_trial_and_seeds_only_filter(registry):
    trials = expand(suite(BASIC), registry, seeds=3, only=["zaremba"], overrides=parse_overrides(["lr=0.5", "cell='gru'"]))
    assert {t.config["variant"] for t in trials} == {"zaremba"}
    assert sorted({t.config["seed"] for t in trials}) == [1, 2, 3]
    assert all(t.config["lr"] == 0.5 and t.config["cell"] == "gru" for t in trials)


@pytest.mark.parametrize("text, overrides, message", [
    (BASIC, {"hiden_size": 3}, "did you mean 'hidden_size'"),
    (BASIC, {"p_input": 1.0}, "outside [0, 1)"),
    (BASIC, {"p_input": -0.1}, "outside [0, 1)"),
    (BASIC, {"epochs": "many"}, "must be an integer"),
    (BASIC, {"epochs": 0}, "must be positive"),
    (BASIC, {"optimizer": "adamw"}, "must be one of"),
    (BASIC.replace("p_input = 0.4", "train_segments = 10"), {}, "does not apply to task 'ptb'"),
    (BASIC.replace('"zaremba"', '"zarembba"'), {}, "did you mean 'zaremba'"),
    (BASIC.replace("[0.1, 0.2]", "[]"), {}, "non-empty list"),
    (BASIC.replace('task = "ptb"', 'task = "imdb"'), {}, "unknown task"),
    (BASIC.replace('task = "ptb"', 'task = []'), {}, "unknown task []"),
])
def test_bad_input_is_one_clear_line(registry, text, overrides, message):
    with pytest.raises(DropbenchError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as error:
        expand(suite(text), registry, overrides=overrides)
    assert "\n" not in str(error.value)


def test_unknown_and_malformed_suites(tmp_path):
    with pytest.raises(DropbenchError, match="did you mean 'quick'"):
        load_suite("quik")
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = 2\n[[experiment]\n")
    with pytest.raises(DropbenchError, match=r"malformed TOML in .*bad.toml.*line 2"):
        load_suite(str(bad))


def test_set_parses_values_like_toml():
    assert parse_overrides(["a=1", "b=0.5", "c=gru", "d='x'", "e=true"]) == {"a": 1, "b": 0.5, "c": "gru", "d": "x", "e": True}
    with pytest.raises(DropbenchError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_dry_run_json_lists_every_key_of_every_trial():
    out = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "run", "quick", "--dry-run", "--json", "--set", "epochs=2"],
                         capture_output=True, text=True, check=True).stdout
    trials = json.loads(out)
    assert trials and all(t["config"]["epochs"] == 2 for t in trials)
    for trial in trials:
        assert set(ISSUE_KEYS) <= set(trial["config"]), set(ISSUE_KEYS) - set(trial["config"])
        assert set(trial["config"]) == set(TASK_DEFAULTS[trial["config"]["task"]])
        assert trial["config"]["device"] in ("cpu", "cuda")


def test_cli_errors_are_one_line_without_traceback():
    result = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "run", "quick", "--dry-run", "--set", "p_output=1.5"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "p_output = 1.5 is outside [0, 1)" in result.stderr
    assert "Traceback" not in result.stderr


def test_common_keys_cover_the_issue_names():
    assert set(ISSUE_KEYS) <= set(COMMON)


def test_plugin_variants_join_every_experiment(registry):
    from dropbench.variants import SEQUENCE, Variant
    mine = Variant(name="mine", description="d", masks={"recurrent": SEQUENCE}, p={"recurrent": 0.3}, source="plugin x.py")
    trials = expand(suite(BASIC), {**registry, "mine": mine}, extra_variants=["mine"])
    assert sum(t.config["variant"] == "mine" for t in trials) == 2 * 2  # two grid cells x two seeds
    assert {t.config["p_recurrent"] for t in trials if t.config["variant"] == "mine"} == {0.1, 0.2}


def test_only_with_a_misspelt_variant_suggests_the_closest(registry):
    with pytest.raises(DropbenchError, match=r"--only names 'zarembaa'.*did you mean 'zaremba'"):
        expand(suite(BASIC), registry, only=["zarembaa"])


def test_evaluation_splits_too_small_for_their_streams_are_refused(registry):
    with pytest.raises(DropbenchError, match=r"test_tokens = 3 is too few for 5 streams"):
        expand(suite(BASIC), registry, overrides={"test_tokens": 3, "test_batch_size": 5})
    with pytest.raises(DropbenchError, match="needs a validation set"):
        expand(suite('[[experiment]]\ntask = "sentiment"\nvariants = ["naive"]\nselect = "best_val"\n'), registry)


def test_set_of_a_key_of_another_task_leaves_these_trials_alone(registry):
    trials = expand(suite(BASIC), registry, overrides={"train_segments": 10, "epochs": 2})
    assert all("train_segments" not in t.config and t.config["epochs"] == 2 for t in trials)
