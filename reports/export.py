"""CSV exports of a results store: results.csv (one row per trial) and curves.csv (one row per
trial and epoch). Written to a temporary file and renamed, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from dropbench.harness.store import ResultStore

RESULT_COLUMNS = [
    "trial_id", "suite", "task", "variant", "cell", "seed", "grid_cell", "status", "epochs_run",
    "val_ppl", "test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "mc_eval_wps", "wall_s",
    "hidden_size", "num_layers", "p_embedding", "p_input", "p_recurrent", "p_cell", "p_output", "mc_samples", "device", "error",
]
CURVE_COLUMNS = ["trial_id", "suite", "task", "variant", "seed", "grid_cell", "epoch", "lr", "train_loss", "train_ppl",
                 "val_ppl", "test_rmse", "test_rmse_mc", "train_wps", "wall_s"]


def results_frame(store: ResultStore) -> pd.DataFrame:
    rows = []
    for trial in store.trials():
        config = json.loads(trial["config"])
        rows.append({**{k: config.get(k) for k in RESULT_COLUMNS if k in config}, **trial, "trial_id": trial["id"]})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def curves_frame(store: ResultStore) -> pd.DataFrame:
    trials = {t["id"]: t for t in store.trials()}
    rows = [{**{k: trials[c["trial_id"]][k] for k in ("suite", "task", "variant", "seed", "grid_cell")}, **c}
            for c in store.curves() if c["trial_id"] in trials]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _write_atomic(frame: pd.DataFrame, path: Path):
    temporary = path.with_name(path.name + ".tmp")
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def export_csvs(store: ResultStore, out_dir: Path) -> tuple[Path, Path]:
    results, curves = Path(out_dir) / "results.csv", Path(out_dir) / "curves.csv"
    _write_atomic(results_frame(store), results)
    _write_atomic(curves_frame(store), curves)
    return results, curves
