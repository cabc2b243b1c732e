"""The results store: one SQLite database per output folder (DIR/results.sqlite).

Every write is one transaction, so a kill at any moment leaves the database as it was after the
last finished epoch or trial.

    runs           one row per `dropbench run` invocation: environment (torch, device, git commit)
    trials         one row per trial: resolved config, status, final metrics, timings
    curves         one row per trial and epoch
    sample_losses  per test sentence (LM: summed NLL, token count) or segment (squared error),
                   deterministic ('det') and MC ('mc'), for paired significance tests
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

TABLES = {
    "runs": ["id INTEGER PRIMARY KEY AUTOINCREMENT", "suite TEXT", "argv TEXT", "environment TEXT", "started_at REAL", "finished_at REAL"],
    "trials": [
        "id TEXT PRIMARY KEY", "position INTEGER", "run_id INTEGER", "suite TEXT", "experiment TEXT", "selection TEXT", "reference TEXT",
        "task TEXT", "variant TEXT", "seed INTEGER", "grid_cell TEXT", "config TEXT", "status TEXT", "epochs_run INTEGER",
        "val_ppl REAL", "test_ppl REAL", "test_ppl_mc REAL", "test_rmse REAL", "test_rmse_mc REAL",
        "train_wps REAL", "eval_wps REAL", "mc_eval_wps REAL", "wall_s REAL", "error TEXT", "updated_at REAL",
    ],
    "curves": ["trial_id TEXT", "epoch INTEGER", "lr REAL", "train_loss REAL", "train_ppl REAL", "val_ppl REAL",
               "test_rmse REAL", "test_rmse_mc REAL", "train_wps REAL", "wall_s REAL", "PRIMARY KEY (trial_id, epoch)"],
    "sample_losses": ["trial_id TEXT", "kind TEXT", "idx INTEGER", "loss REAL", "count INTEGER", "PRIMARY KEY (trial_id, kind, idx)"],
}
METRICS = ("val_ppl", "test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "mc_eval_wps")
CURVE_COLUMNS = ("lr", "train_loss", "train_ppl", "val_ppl", "test_rmse", "test_rmse_mc", "train_wps", "wall_s")


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.row_factory = sqlite3.Row
        with self.db:
            self.db.execute("PRAGMA journal_mode=WAL")
            for table, columns in TABLES.items():
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
                self._add_missing_columns(table, columns)

    def _add_missing_columns(self, table: str, columns: list[str]):
        """Bring a table written by an older dropbench up to date: add the columns it lacks."""
        present = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            name, kind = column.split()[:2]
            if name != "PRIMARY" and name not in present:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self):
        self.db.close()

    def start_run(self, suite: str, argv: list[str], environment: dict) -> int:
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO runs (suite, argv, environment, started_at) VALUES (?, ?, ?, ?)",
                (suite, json.dumps(argv), json.dumps(environment), time.time()),
            )
        return cursor.lastrowid

    def finish_run(self, run_id: int):
        with self.db:
            self.db.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (time.time(), run_id))

    def register_trial(self, trial_id: str, position: int, suite: str, config: dict, grid_cell: dict,
                       experiment: str = "", selection: str = "", reference: str = ""):
        """Record a planned trial; a trial already known (from an earlier run) keeps its state."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO trials (id, position, suite, experiment, selection, reference, task, variant, seed, grid_cell,"
                " config, status, epochs_run, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                (trial_id, position, suite, experiment, selection, reference, config["task"], config["variant"], config["seed"],
                 json.dumps(grid_cell, sort_keys=True), json.dumps(config, sort_keys=True), time.time()),
            )

    def status(self, trial_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return row["status"] if row else None

    def mark_running(self, trial_id: str, run_id: int):
        with self.db:
            self.db.execute("UPDATE trials SET status = 'running', run_id = ?, error = NULL, updated_at = ? WHERE id = ?", (run_id, time.time(), trial_id))

    def set_status(self, trial_id: str, status: str):
        with self.db:
            self.db.execute("UPDATE trials SET status = ?, updated_at = ? WHERE id = ?", (status, time.time(), trial_id))

    def record_epoch(self, trial_id: str, epoch: int, values: dict):
        columns = [c for c in CURVE_COLUMNS if values.get(c) is not None]
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO curves (trial_id, epoch, {', '.join(columns)}) VALUES (?, ?{', ?' * len(columns)})",
                (trial_id, epoch, *(values[c] for c in columns)),
            )
            self.db.execute("UPDATE trials SET epochs_run = ?, updated_at = ? WHERE id = ?", (epoch, time.time(), trial_id))

    def finish_trial(self, trial_id: str, status: str, metrics: dict, sample_losses: dict | None = None, error: str | None = None):
        """Final metrics, status ('done', 'diverged', 'failed') and per-sample losses, in one transaction.
        sample_losses: kind -> (losses (N,), counts (N,))."""
        columns = [c for c in METRICS + ("epochs_run", "wall_s") if metrics.get(c) is not None]
        with self.db:
            self.db.execute(
                f"UPDATE trials SET status = ?, error = ?, updated_at = ?{''.join(f', {c} = ?' for c in columns)} WHERE id = ?",
                (status, error, time.time(), *(metrics[c] for c in columns), trial_id),
            )
            for kind, (losses, counts) in (sample_losses or {}).items():
                self.db.execute("DELETE FROM sample_losses WHERE trial_id = ? AND kind = ?", (trial_id, kind))
                self.db.executemany(
                    "INSERT INTO sample_losses (trial_id, kind, idx, loss, count) VALUES (?, ?, ?, ?, ?)",
                    [(trial_id, kind, i, float(l), int(n)) for i, (l, n) in enumerate(zip(losses, counts))],
                )

    def trials(self) -> list[dict]:
        return [dict(row) for row in self.db.execute("SELECT * FROM trials ORDER BY position, id")]

    def curves(self) -> list[dict]:
        return [dict(row) for row in self.db.execute("SELECT * FROM curves ORDER BY trial_id, epoch")]

    def sample_losses(self, trial_id: str, kind: str = "det") -> list[dict]:
        return [dict(row) for row in self.db.execute(
            "SELECT idx, loss, count FROM sample_losses WHERE trial_id = ? AND kind = ? ORDER BY idx", (trial_id, kind))]

    def runs(self) -> list[dict]:
        return [dict(row) for row in self.db.execute("SELECT * FROM runs ORDER BY id")]
