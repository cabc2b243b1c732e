"""Random suite files and --set values either resolve or raise DropbenchError — nothing else."""

import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbench.harness.config import ALL_KEYS, expand, parse_overrides, parse_suite
from dropbench.harness.errors import DropbenchError
from dropbench.variants import load_registry

REGISTRY = load_registry()
KEYS = ALL_KEYS + ["hiden_size", "variants", "grid", "per_variant", "cells", "select", "reference", "seeds", "name", ""]
scalars = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12), st.sampled_from(["ptb", "sentiment", "lstm", "gru", "sgd", "adam", "zaremba", "none", "best_val", "ptb-medium"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)), max_leaves=6)
experiments = st.dictionaries(st.sampled_from(KEYS), values, max_size=6).map(
    lambda e: {"variants": ["zaremba"], **e} if len(e) % 2 else e)
suites = st.fixed_dictionaries({}, optional={
    "seeds": st.one_of(st.integers(-2, 3), st.lists(st.integers(0, 5), max_size=3), scalars),
    "name": scalars, "description": scalars,
    "defaults": st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=4), scalars),
    "experiment": st.one_of(st.lists(experiments, max_size=3), scalars),
    "bogus": scalars,
})
overrides = st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(st.text(max_size=8), st.integers(-3, 100).map(str),
                                                                 st.floats(allow_nan=False).map(repr))), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=suites, sets=overrides)
def test_config_loader_resolves_or_raises_its_own_error(raw, sets):
    try:
        suite = parse_suite(raw, "fuzz.toml", "fuzz")
        trials = expand(suite, REGISTRY, overrides=parse_overrides([f"{k}={v}" for k, v in sets]))
    except DropbenchError as error:
        assert "\n" not in str(error)
        return
    for trial in trials:
        assert trial.config["variant"] in REGISTRY
        assert all(0.0 <= trial.config[k] < 1.0 for k in trial.config if k.startswith("p_"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_toml_text_never_escapes_as_another_exception(text, tmp_path_factory):
    from dropbench.harness.config import load_suite
    path = tmp_path_factory.mktemp("fuzz") / "suite.toml"
    path.write_text(text)
    try:
        expand(load_suite(str(path)), REGISTRY)
    except DropbenchError:
        pass
    except tomllib.TOMLDecodeError as error:  # must have been converted
        raise AssertionError(f"raw TOML error escaped: {error}")
