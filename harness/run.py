"""Runs the trials of a suite into an output folder: registers them in the store, skips the
finished ones, runs the rest one after another with progress bars, and exports the CSVs.

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
from .store import ResultStore
from .train import Progress, run_trial

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


def run_trials(trials: list[Trial], registry: dict, out_dir: Path, data_dir: Path, argv: list[str], show_progress: bool = True) -> RunSummary:
    out_dir = Path(out_dir)
    _writable(out_dir)
    with FolderLock(out_dir):
        checkpoints = out_dir / "checkpoints"
        checkpoints.mkdir(exist_ok=True)
        store = ResultStore(out_dir / "results.sqlite")
        try:
            return _run_all(trials, registry, store, out_dir, data_dir, checkpoints, argv, show_progress)
        finally:
            export_csvs(store, out_dir)
            store.close()


def _run_all(trials, registry, store, out_dir, data_dir, checkpoints, argv, show_progress) -> RunSummary:
    devices = sorted({t.config["device"] for t in trials})
    run_id = store.start_run(trials[0].suite if trials else "", argv, environment(",".join(devices)))
    for position, trial in enumerate(trials):
        store.register_trial(trial.id, position, trial.suite, trial.config, trial.grid_cell, trial.experiment, trial.select, trial.reference)
    todo = [t for t in trials if store.status(t.id) not in FINISHED]
    suite_bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc="suite", unit="trial", disable=not show_progress, position=0)
    for trial in todo:
        _run_one(trial, registry, store, run_id, data_dir, checkpoints, show_progress)
        suite_bar.update(1)
        export_csvs(store, out_dir)
    suite_bar.close()
    store.finish_run(run_id)
    ids = {t.id for t in trials}
    counts = {}
    for row in store.trials():
        if row["id"] in ids:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return RunSummary(counts, out_dir)


def _run_one(trial: Trial, registry, store: ResultStore, run_id: int, data_dir: Path, checkpoints: Path, show_progress: bool):
    config = trial.config
    label = f"{config['variant']} seed {config['seed']}" + "".join(f" {k}={v}" for k, v in trial.grid_cell.items())
    bar = tqdm(desc=label, unit="batch", leave=False, disable=not show_progress, position=1)

    def start(total):
        bar.reset(total=total)

    progress = Progress(on_epoch=lambda epoch, values: store.record_epoch(trial.id, epoch, values), start=start,
                        tick=lambda: bar.update(1), note=lambda message: tqdm.write(f"{label}: {message}", file=sys.stderr))
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
