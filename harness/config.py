"""Suites and trial configs: a suite (TOML) expands into trials (experiment x variant x grid cell x
seed), each a flat dict of the keys below. A trial is a pure function of its resolved config.

Resolution, later wins: task defaults < variant's default probabilities < suite [defaults] <
[[experiment]] keys < [experiment.per_variant.NAME] < grid cell < --set < seed. Probabilities of
mask slots the variant does not use are 0, MC samples are 0 for variants without masks, and early
stopping is off for variants that do not ask for it: the resolved config says what actually runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dropbench.variants import SLOTS, Variant, config_key, get_variant

from .errors import DropbenchError, did_you_mean
from .reference import reference_columns

PROBABILITY_KEYS = tuple(config_key(slot) for slot in SLOTS)
CHOICES = {"task": ("ptb", "sentiment"), "cell": ("lstm", "gru"), "optimizer": ("sgd", "adam"), "device": ("auto", "cpu", "cuda"),
           "precision": ("fp32", "tf32", "bf16")}

# Keys every task has; the task tables below add their own and give defaults (paper §2 and §3).
COMMON = {
    "task": "ptb", "variant": "none", "cell": "lstm", "seed": 1, "device": "auto", "precision": "fp32",
    "hidden_size": 200, "embedding_size": 0, "num_layers": 2, "bptt": 35, "batch_size": 20, "epochs": 13,
    "lr": 1.0, "lr_decay": 2.0, "lr_decay_start": 4, "max_grad_norm": 5.0, "init_scale": 0.1,
    "weight_decay": 0.0, "optimizer": "sgd", "mc_samples": 0,
    **{key: 0.0 for key in PROBABILITY_KEYS},
}
TASK_DEFAULTS = {
    # Zaremba et al. 2014 "small" PTB model; eval streams as in the paper (validation 20, test 1).
    "ptb": {**COMMON, "eval_batch_size": 20, "test_batch_size": 1, "early_stopping_patience": 3,
            "train_tokens": 0, "valid_tokens": 0, "test_tokens": 0},
    # Pang & Lee regression as in the authors' scripts: Adam, batch 128, 200-token segments.
    "sentiment": {**COMMON, "task": "sentiment", "hidden_size": 128, "embedding_size": 128, "num_layers": 1,
                  "bptt": 200, "batch_size": 128, "epochs": 20, "lr": 0.001, "lr_decay": 1.0, "lr_decay_start": 0,
                  "max_grad_norm": 0.0, "init_scale": 0.0, "weight_decay": 1e-6, "optimizer": "adam",
                  "mc_samples_per_epoch": 0, "train_segments": 0, "test_segments": 0},
}
NON_NEGATIVE = {"lr_decay_start", "max_grad_norm", "init_scale", "weight_decay", "mc_samples", "embedding_size",
                "early_stopping_patience", "train_tokens", "valid_tokens", "test_tokens", "mc_samples_per_epoch",
                "train_segments", "test_segments"}
ALL_KEYS = sorted(set().union(*TASK_DEFAULTS.values()))


def parse_value(text: str):
    """A --set value as TOML would read it (numbers, booleans, quoted strings), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(pairs) -> dict:
    """['lr=0.5', 'variant=zaremba'] -> {'lr': 0.5, 'variant': 'zaremba'}."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DropbenchError(f"--set {pair!r} is not KEY=VALUE; write e.g. --set epochs=2")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def check_value(key: str, value, where: str, task: str = "ptb"):
    """Raise a one-line DropbenchError unless `value` has the type and range `key` takes."""
    defaults = TASK_DEFAULTS.get(task, COMMON)
    if key not in defaults:
        hint = did_you_mean(key, defaults)
        if key in ALL_KEYS:
            raise DropbenchError(f"config key {key!r} does not apply to task {task!r} ({where}); remove it")
        raise DropbenchError(f"unknown config key {key!r} ({where}){hint}; keys are listed by `dropbench run --dry-run --json`")
    expected = type(defaults[key])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        kind = {int: "an integer", float: "a number", str: "a string"}[expected]
        raise DropbenchError(f"config key {key!r} must be {kind}, got {value!r} ({where})")
    if key in CHOICES and value not in CHOICES[key]:
        raise DropbenchError(f"config key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r} ({where}){did_you_mean(value, CHOICES[key])}")
    if key in PROBABILITY_KEYS and not 0.0 <= value < 1.0:
        raise DropbenchError(f"{key} = {value} is outside [0, 1) ({where}); a dropout probability must be at least 0 and below 1")
    if expected in (int, float) and key not in PROBABILITY_KEYS and key != "seed":
        if value < 0 or (value == 0 and key not in NON_NEGATIVE):
            raise DropbenchError(f"config key {key!r} must be {'non-negative' if key in NON_NEGATIVE else 'positive'}, got {value!r} ({where})")
    return value


def trial_id(config: dict) -> str:
    """Stable id of a resolved config: finished trials are recognised by it when a run is repeated."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    description: str
    seeds: list[int]
    defaults: dict
    experiments: list[dict]
    path: str = ""


@dataclass
class Trial:
    suite: str
    config: dict
    grid_cell: dict = field(default_factory=dict)
    experiment: str = ""
    select: str = ""  # "best_val": of this experiment's grid cells, only the best validation one per seed counts
    reference: str = ""  # the paper's table column these trials set up (e.g. "medium"), for reference numbers

    @property
    def id(self) -> str:
        return trial_id(self.config)


def suite_names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("dropbench.suites").iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name ('quick') or a TOML file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise DropbenchError(f"suite file {path} does not exist; give a .toml path or a built-in name ({', '.join(suite_names())})")
        text, where = path.read_text(), str(path)
    else:
        if name_or_path not in suite_names():
            raise DropbenchError(f"unknown suite {name_or_path!r}{did_you_mean(name_or_path, suite_names())}; built-in suites: {', '.join(suite_names())}")
        text, where = resources.files("dropbench.suites").joinpath(f"{name_or_path}.toml").read_text(), f"suite {name_or_path}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DropbenchError(f"malformed TOML in {where}: {exc}; fix the file") from None
    return parse_suite(raw, where, default_name=Path(where).stem if where.endswith(".toml") else name_or_path)


def _table(value, what: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise DropbenchError(f"{what} must be a table ({where}); write it as [{what}]")
    return value


def parse_suite(raw: dict, where: str, default_name: str) -> Suite:
    known = {"name", "description", "seeds", "defaults", "experiment"}
    for key in raw:
        if key not in known:
            raise DropbenchError(f"unknown suite field {key!r} ({where}){did_you_mean(key, known)}; suite fields are {', '.join(sorted(known))}")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
        seeds = list(range(1, seeds + 1))
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise DropbenchError(f"seeds must be a positive integer or a non-empty list of integers, got {seeds!r} ({where})")
    experiments = raw.get("experiment")
    if not isinstance(experiments, list) or not experiments:
        raise DropbenchError(f"suite has no [[experiment]] table ({where}); add one with task and variants")
    for name in ("name", "description"):
        if name in raw and not isinstance(raw[name], str):
            raise DropbenchError(f"suite field {name!r} must be a string ({where})")
    return Suite(
        name=raw.get("name", default_name), description=raw.get("description", ""), seeds=seeds,
        defaults=_table(raw.get("defaults", {}), "defaults", where),
        experiments=[_table(e, "experiment", where) for e in experiments], path=where,
    )


def _grid_cells(grid: dict, cells, where: str) -> list[dict]:
    """The experiment's grid cells: every combination of `grid` (key -> list of values), times
    every explicit cell of `cells` (a list of tables, for values that move together)."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise DropbenchError(f"grid key {key!r} needs a non-empty list of values ({where}); write e.g. {key} = [0.25, 0.5]")
    if cells is not None and not (isinstance(cells, list) and cells and all(isinstance(c, dict) for c in cells)):
        raise DropbenchError(f"cells must be a non-empty list of tables ({where}); write e.g. cells = [{{ p_input = 0.5 }}]")
    keys = list(grid)
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    return [{**combo, **cell} for combo in combos for cell in (cells or [{}])]


def resolve(layers: list[tuple[str, dict]], variant: Variant) -> dict:
    """Merge config layers (label, dict) for one trial, checking every key and value."""
    task = next((layer["task"] for _, layer in reversed(layers) if "task" in layer), "ptb")
    if not isinstance(task, str) or task not in TASK_DEFAULTS:  # a TOML list or table is no task name
        raise DropbenchError(f"unknown task {task!r}{did_you_mean(str(task), TASK_DEFAULTS)}; tasks are {', '.join(TASK_DEFAULTS)}")
    config = dict(TASK_DEFAULTS[task])
    config.update({config_key(slot): p for slot, p in variant.p.items()})
    for where, layer in layers:
        for key, value in layer.items():
            if where == "--set" and key not in config and key in ALL_KEYS:
                continue  # --set applies a key to the trials of the tasks that have it
            config[key] = check_value(key, value, where, task)
    config["variant"] = variant.name
    for slot in SLOTS:
        if slot not in variant.masks:
            config[config_key(slot)] = 0.0
    if not variant.stochastic:
        config.update({key: 0 for key in ("mc_samples", "mc_samples_per_epoch") if key in config})
    if "early_stopping_patience" in config and not variant.early_stopping:
        config["early_stopping_patience"] = 0
    where = layers[-1][0] if layers else "config"
    if task == "ptb":  # every split needs at least two tokens per stream
        for split, streams in (("train_tokens", "batch_size"), ("valid_tokens", "eval_batch_size"), ("test_tokens", "test_batch_size")):
            if config[split] and config[split] < 2 * config[streams]:
                raise DropbenchError(f"{split} = {config[split]} is too few for {config[streams]} streams ({streams}); give at least {2 * config[streams]} or 0 for all")
    return config


def expand(suite: Suite, registry: dict, seeds=None, only=None, overrides=None, device=None, extra_variants=()) -> list[Trial]:
    """Every trial of the suite, in order: experiment, variant, grid cell, seed. `extra_variants`
    (the variants of --plugin files) join every experiment that does not already name them."""
    overrides = dict(overrides or {})
    if device is not None:
        overrides["device"] = device
    seeds = list(range(1, seeds + 1)) if seeds else suite.seeds
    trials, seen, offered = [], set(), set()
    for number, experiment in enumerate(suite.experiments, start=1):
        where = f"{suite.path} experiment {number}"
        experiment = dict(experiment)
        variant_names = experiment.pop("variants", None)
        if not (isinstance(variant_names, list) and variant_names and all(isinstance(v, str) for v in variant_names)):
            raise DropbenchError(f"experiment needs variants = [\"name\", ...] ({where})")
        variant_names = variant_names + [name for name in extra_variants if name not in variant_names]
        label = experiment.pop("name", f"{experiment.get('task', 'ptb')}-{number}")
        select = experiment.pop("select", "")
        if select not in ("", "best_val"):
            raise DropbenchError(f"select = {select!r} is not a selection rule ({where}); use select = \"best_val\" or leave it out")
        if select and experiment.get("task", suite.defaults.get("task", "ptb")) != "ptb":
            raise DropbenchError(f"select = \"best_val\" needs a validation set, which only task 'ptb' has ({where}); remove it")
        reference = experiment.pop("reference", "")
        if reference and reference not in reference_columns():
            raise DropbenchError(f"reference = {reference!r} is not a column of the paper's tables ({where}){did_you_mean(str(reference), reference_columns())}; choose from {', '.join(reference_columns())}")
        per_variant = _table(experiment.pop("per_variant", {}), "experiment.per_variant", where)
        cells = _grid_cells(_table(experiment.pop("grid", {}), "experiment.grid", where), experiment.pop("cells", None), where)
        variants = {name: get_variant(name, registry) for name in variant_names}
        offered.update(variant_names)
        for name in per_variant:
            if name not in variant_names:
                raise DropbenchError(f"per_variant.{name} names a variant this experiment does not run ({where}){did_you_mean(name, variant_names)}")
        for name in variant_names:
            if only and name not in only:
                continue
            variant = variants[name]
            for cell in cells:
                for seed in seeds:
                    layers = [
                        (f"{suite.path} [defaults]", suite.defaults), (where, experiment),
                        (f"{where} per_variant.{name}", _table(per_variant.get(name, {}), f"per_variant.{name}", where)),
                        (f"{where} grid", cell), ("--set", overrides), ("seed", {"seed": seed}),
                    ]
                    trial = Trial(suite.name, resolve(layers, variant), cell, label, select, reference)
                    if trial.id not in seen:  # grid cells over a slot the variant does not use coincide
                        seen.add(trial.id)
                        trials.append(trial)
    if only:
        unknown = [name for name in only if name not in offered]
        if unknown:
            raise DropbenchError(f"--only names {unknown[0]!r}, which suite {suite.name!r} does not run{did_you_mean(unknown[0], offered)};"
                                 f" its variants: {', '.join(sorted(offered))}")
    return trials
