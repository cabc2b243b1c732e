"""Reports from a results folder: CSV exports and the HTML comparison report.

    write_report(out_dir)   -> out_dir/report.html, writing first results.csv and curves.csv (from
                               results.sqlite), then summary.csv, significance.csv and figures/*.svg

    export.py       results.csv (one row per trial), curves.csv (one row per trial and epoch)
    statistics.py   small pure functions: mean/std/t-CI, Welch, Mann-Whitney, paired t, Wilcoxon,
                    bootstrap CI of a difference, Hedges' g, Holm, paired sentence bootstrap
    summary.py      summary.csv (per suite × task × cell × model size × experiment × variant × grid
                    cell: n, mean, std, 95% CI of every metric, paper value and difference, status
                    counts) and significance.csv (per pair of groups of a setting and metric)
    figures.py      seaborn figures as SVG: validation curves, sentiment RMSE curves, the
                    p_recurrent × p_embedding heatmap, words/s, pairwise significance
    html.py         the self-contained report.html (inline CSS, figures as data URIs, escaped text)

A report renders from partial results (a suite still running or interrupted): only finished
('done') trials enter means and tests; diverged, failed, running and pending trials are counted and
listed, never averaged. Every file is written to a temporary name and renamed into place, so a
reader never sees half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from dropbench.harness.errors import DropbenchError
from dropbench.harness.store import ResultStore

from .export import export_csvs, write_atomic, write_csv

__all__ = ["write_report", "FIGURE_NAMES"]

FIGURE_NAMES = ("val_ppl_curves", "sentiment_rmse", "dropout_heatmap", "wps", "significance_heatmap")


def _read_csv(path: Path) -> pd.DataFrame:
    # Only empty fields are missing: a variant or suite called "NA" or "null" stays a name.
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def _sample_loader(store: ResultStore):
    cache = {}

    def load(trial_id: str, kind: str):
        if (trial_id, kind) not in cache:
            rows = store.sample_losses(trial_id, kind)
            cache[(trial_id, kind)] = (np.array([r["idx"] for r in rows], dtype=np.int64), np.array([r["loss"] for r in rows], dtype=float),
                                       np.array([r["count"] for r in rows], dtype=float)) if rows else None
        return cache[(trial_id, kind)]

    return load


def write_report(out_dir, registry: Optional[dict] = None) -> Path:
    """Write the report of the results folder `out_dir` (a `dropbench run --out` folder) into it and
    return the path of report.html. registry: name -> Variant for the variants' descriptions (the
    CLI's, with its plugins); by default the built-in and installed variants.

    Writes results.csv and curves.csv from results.sqlite first (export_csvs), then summary.csv,
    significance.csv, figures/NAME.svg and report.html. Without results.sqlite but with results.csv
    (a copied folder) the report uses the CSVs and says that sentence-level tests are unavailable.
    Raises DropbenchError where the folder holds no results."""
    from . import figures as figures_module
    from . import html, summary

    out_dir = Path(out_dir)
    database, results_csv, curves_csv = out_dir / "results.sqlite", out_dir / "results.csv", out_dir / "curves.csv"
    if not out_dir.is_dir():
        raise DropbenchError(f"results folder {out_dir} does not exist; give the --out folder of a `dropbench run`")
    notes = []
    store = None
    if database.is_file():
        store = ResultStore(database)
    elif results_csv.is_file():
        notes.append("This folder has no results.sqlite: the report uses results.csv and curves.csv; the environment and the "
                     "sentence-level bootstrap (per-sentence losses) are unavailable.")
    else:
        raise DropbenchError(f"no results in {out_dir}: expected results.sqlite (written by `dropbench run`); give the run's --out folder")
    try:
        if store is not None:
            export_csvs(store, out_dir)
        trials = summary.prepare(_read_csv(results_csv))
        results = summary.with_selection(trials)  # + the selected trials as groups of their own
        curves = _read_csv(curves_csv) if curves_csv.is_file() else pd.DataFrame(columns=["trial_id", "epoch"])
        runs = store.runs() if store is not None else []
        summary_frame = summary.summary_frame(results)
        headline = summary.headline(summary_frame)
        significance = summary.significance_frame(results, _sample_loader(store) if store is not None else None)
    finally:
        if store is not None:
            store.close()
    if registry is None:
        try:
            from dropbench.variants import load_registry
            registry = load_registry()
        except Exception:  # descriptions are a nicety; a broken plugin must not cost the report
            registry = None

    figures = figures_module.build_figures(results, curves, summary_frame, headline, significance)
    write_csv(summary_frame, out_dir / "summary.csv")
    write_csv(significance, out_dir / "significance.csv")
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(exist_ok=True)
    for figure in figures:
        target = figure_dir / f"{figure.name}.svg"
        if figure.svg:
            write_atomic(target, figure.svg)
        elif target.exists():  # left from an earlier report of this folder: no longer true
            target.unlink()
    page = html.render(trials, summary_frame, headline, significance, figures, runs, registry, notes)
    report = out_dir / "report.html"
    write_atomic(report, page.encode("utf-8"))
    return report
