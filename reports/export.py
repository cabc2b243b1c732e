"""CSV exports of a results store: results.csv (one row per trial) and curves.csv (one row per
trial and epoch). Written to a temporary file and renamed, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from dropbench.harness.reference import paper_values
from dropbench.harness.store import ResultStore

RESULT_COLUMNS = [
    "trial_id", "suite", "experiment", "task", "variant", "cell", "seed", "grid_cell", "selection", "selected", "status", "epochs_run",
    "val_ppl", "test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "mc_eval_wps", "wall_s",
    "reference", "paper_val_ppl", "paper_test_ppl", "paper_test_ppl_mc", "paper_wps",
    "hidden_size", "num_layers", "p_embedding", "p_input", "p_recurrent", "p_cell", "p_output", "mc_samples", "device", "error",
]
CURVE_COLUMNS = ["trial_id", "suite", "task", "variant", "seed", "grid_cell", "epoch", "lr", "train_loss", "train_ppl",
                 "val_ppl", "test_rmse", "test_rmse_mc", "train_wps", "wall_s"]


def results_frame(store: ResultStore) -> pd.DataFrame:
    rows = []
    for trial in store.trials():
        config = json.loads(trial["config"])
        rows.append({**{k: config.get(k) for k in RESULT_COLUMNS if k in config}, **trial, "trial_id": trial["id"],
                     **paper_values(trial["reference"], trial["variant"])})
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["selected"] = selected(frame)
    return frame


def selected(frame: pd.DataFrame) -> pd.Series:
    """Which trials count in comparisons. In an experiment with selection 'best_val', per variant and
    seed only the finished grid cell with the lowest validation perplexity; elsewhere every trial."""
    chosen = pd.Series(True, index=frame.index)
    candidates = frame[(frame["selection"] == "best_val")]
    chosen[candidates.index] = False
    done = candidates[(candidates["status"] == "done") & candidates["val_ppl"].notna()]
    if not done.empty:
        best = done.groupby(["suite", "experiment", "variant", "seed"])["val_ppl"].idxmin()
        chosen[best.values] = True
    return chosen


def curves_frame(store: ResultStore) -> pd.DataFrame:
    trials = {t["id"]: t for t in store.trials()}
    rows = [{**{k: trials[c["trial_id"]][k] for k in ("suite", "task", "variant", "seed", "grid_cell")}, **c}
            for c in store.curves() if c["trial_id"] in trials]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def write_atomic(path: Path, data: bytes):
    """Write `data` to a temporary name unique to this process, then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_csv(frame: pd.DataFrame, path: Path):
    write_atomic(path, frame.to_csv(index=False).encode("utf-8"))


def export_csvs(store: ResultStore, out_dir: Path) -> tuple[Path, Path]:
    results, curves = Path(out_dir) / "results.csv", Path(out_dir) / "curves.csv"
    write_csv(results_frame(store), results)
    write_csv(curves_frame(store), curves)
    return results, curves
