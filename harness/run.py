"""Runs the trials of a suite into an output folder: registers them in the store, skips the
finished ones, runs the rest with progress bars, and exports the CSVs. Language-model trials of
one shape train together as a population of up to `population_size` (`population.py`); the
others run one after another.

A trial that raises is recorded as 'failed' with its traceback and the suite goes on; a trial
whose loss becomes NaN/inf is recorded as 'diverged'. Errors in the user's input (DropbenchError)
stop the run, because they would fail every trial the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dropbench.reports.export import export_csvs

from .config import Trial
from .errors import DropbenchError
from .lock import FolderLock
from .population import population_key
from .store import ResultStore
from .train import Progress, run_population, run_trial

FINISHED = ("done", "diverged")


def environment(device: str) -> dict:
    """What a result depends on besides its config: library versions, hardware, code version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "git_commit": commit,
    }


@dataclass
class RunSummary:
    counts: dict
    out_dir: Path

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed")


def _writable(out_dir: Path):
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise DropbenchError(f"cannot write to output folder {out_dir} ({exc.strerror}); choose another with --out") from None


def run_trials(trials: list[Trial], registry: dict, out_dir: Path, data_dir: Path, argv: list[str], show_progress: bool = True,
               population_size: int = 1) -> RunSummary:
    out_dir = Path(out_dir)
    _writable(out_dir)
    with FolderLock(out_dir):
        checkpoints = out_dir / "checkpoints"
        checkpoints.mkdir(exist_ok=True)
        store = ResultStore(out_dir / "results.sqlite")
        try:
            return _run_all(trials, registry, store, out_dir, data_dir, checkpoints, argv, show_progress, population_size)
        finally:
            export_csvs(store, out_dir)
            store.close()


def populations(trials: list[Trial], registry: dict, size: int) -> list[list[Trial]]:
    """The trials in groups that train together: up to `size` of one population key, in the order
    of each group's first trial; a trial without a key, or with size 1, is a group of its own."""
    groups, open_groups = [], {}
    for trial in trials:
        key = population_key(trial.config, registry[trial.config["variant"]]) if size > 1 else None
        if key is None:
            groups.append([trial])
            continue
        if key not in open_groups or len(open_groups[key]) == size:
            open_groups[key] = []
            groups.append(open_groups[key])
        open_groups[key].append(trial)
    return groups


def _run_all(trials, registry, store, out_dir, data_dir, checkpoints, argv, show_progress, population_size) -> RunSummary:
    devices = sorted({t.config["device"] for t in trials})
    run_id = store.start_run(trials[0].suite if trials else "", argv, environment(",".join(devices)))
    for position, trial in enumerate(trials):
        store.register_trial(trial.id, position, trial.suite, trial.config, trial.grid_cell, trial.experiment, trial.select, trial.reference)
    todo = [t for t in trials if store.status(t.id) not in FINISHED]
    suite_bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc="suite", unit="trial", disable=not show_progress, position=0)
    for group in populations(todo, registry, population_size):
        if len(group) == 1:
            _run_one(group[0], registry, store, run_id, data_dir, checkpoints, show_progress)
        else:
            _run_together(group, registry, store, run_id, data_dir, checkpoints, show_progress)
        suite_bar.update(len(group))
        export_csvs(store, out_dir)
    suite_bar.close()
    store.finish_run(run_id)
    ids = {t.id for t in trials}
    counts = {}
    for row in store.trials():
        if row["id"] in ids:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return RunSummary(counts, out_dir)


def _label(trial: Trial) -> str:
    return f"{trial.config['variant']} seed {trial.config['seed']}" + "".join(f" {k}={v}" for k, v in trial.grid_cell.items())


def _progress(trial: Trial, store: ResultStore, bar: tqdm) -> Progress:
    return Progress(on_epoch=lambda epoch, values: store.record_epoch(trial.id, epoch, values), start=lambda total: bar.reset(total=total),
                    tick=lambda: bar.update(1), note=lambda message: tqdm.write(f"{_label(trial)}: {message}", file=sys.stderr))


def _run_together(group: list[Trial], registry, store: ResultStore, run_id: int, data_dir: Path, checkpoints: Path, show_progress: bool):
    """A population's trials: trained as one, recorded one by one; if it raises, every member fails."""
    bar = tqdm(desc=f"population of {len(group)}: " + ", ".join(_label(t) for t in group), unit="batch", leave=False,
               disable=not show_progress, position=1)
    paths = [checkpoints / f"{trial.id}.pt" for trial in group]
    for trial in group:
        store.mark_running(trial.id, run_id)
    started = time.perf_counter()
    try:
        outcomes = run_population([t.config for t in group], [registry[t.config["variant"]] for t in group], data_dir, paths,
                                  [_progress(t, store, bar) for t in group], _progress(group[0], store, bar))
    except (DropbenchError, KeyboardInterrupt):
        for trial in group:
            store.set_status(trial.id, "interrupted")
        raise
    except Exception:
        for trial in group:
            store.finish_trial(trial.id, "failed", {"wall_s": time.perf_counter() - started}, error=traceback.format_exc())
        tqdm.write(f"population of {len(group)} failed: {sys.exc_info()[1]!r} (traceback in results.sqlite)", file=sys.stderr)
        return
    finally:
        bar.close()
    for trial, outcome, path in zip(group, outcomes, paths):
        store.finish_trial(trial.id, outcome.status, {"wall_s": outcome.metrics.get("wall_s", time.perf_counter() - started), **outcome.metrics},
                           outcome.sample_losses, outcome.error)
        if path.exists():
            os.remove(path)


def _run_one(trial: Trial, registry, store: ResultStore, run_id: int, data_dir: Path, checkpoints: Path, show_progress: bool):
    config = trial.config
    label = _label(trial)
    bar = tqdm(desc=label, unit="batch", leave=False, disable=not show_progress, position=1)
    progress = _progress(trial, store, bar)
    store.mark_running(trial.id, run_id)
    checkpoint = checkpoints / f"{trial.id}.pt"
    started = time.perf_counter()
    try:
        outcome = run_trial(config, registry[config["variant"]], data_dir, checkpoint, progress)
    except (DropbenchError, KeyboardInterrupt):
        store.set_status(trial.id, "interrupted")
        raise
    except Exception:
        store.finish_trial(trial.id, "failed", {"wall_s": time.perf_counter() - started}, error=traceback.format_exc())
        tqdm.write(f"trial {label} failed: {sys.exc_info()[1]!r} (traceback in results.sqlite)", file=sys.stderr)
        return
    finally:
        bar.close()
    store.finish_trial(trial.id, outcome.status, {"wall_s": time.perf_counter() - started, **outcome.metrics}, outcome.sample_losses, outcome.error)
    if checkpoint.exists():
        os.remove(checkpoint)
