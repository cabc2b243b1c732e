"""The report's figures (seaborn on matplotlib Figure objects: no pyplot, no global backend, no
global style change), each rendered to SVG bytes.

    val_ppl_curves        PTB validation perplexity vs epoch, mean line and t-based 95% CI band
                          over seeds, one panel per block
    sentiment_rmse        sentiment test RMSE vs epoch (deterministic solid, MC dashed), one panel
                          per block (LSTM and GRU)
    dropout_heatmap       mean test metric over a p_recurrent × p_embedding grid, per variant
    wps                   training words/s per variant with the ratio to the block's fastest
    significance_heatmap  pairwise Holm-adjusted p-values of the block's primary test metric

build_figures(...) returns one `ReportFigure` per name, in that order; a figure without data has
svg None and `skipped` saying why. Only done trials are drawn; curves show the groups of the
headline table (one grid cell per variant where a variant ran a grid).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Optional

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import statistics as st
from .summary import BLOCK_KEYS, PRIMARY, SELECTED_CELL, canon, block_label, group_key, label_lookup, prepare

STYLE = {"svg.hashsalt": "dropbench", "svg.fonttype": "path", "figure.dpi": 100, "axes.titlesize": 10,
         "legend.fontsize": 8, "legend.title_fontsize": 8}
METRIC_NAMES = {"test_ppl": "test perplexity", "test_ppl_mc": "test perplexity (MC)", "val_ppl": "validation perplexity",
                "test_rmse": "test RMSE", "test_rmse_mc": "test RMSE (MC)"}


@dataclass
class ReportFigure:
    name: str          # file stem under figures/
    title: str
    caption: str
    svg: Optional[bytes] = None
    skipped: str = ""  # why there is no figure


def text(value) -> str:
    """A data string safe for matplotlib: '$' would start mathtext."""
    return str(value).replace("$", r"\$")


def _t_interval(values) -> tuple[float, float]:
    d = st.describe(np.asarray(values, dtype=float))
    return d.ci_low, d.ci_high


def _panels(count: int, width: float = 6.0, height: float = 3.8, columns: int = 2):
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.remove()
    return figure, list(axes[:count])


def _svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buffer.getvalue()


def _blocks(frame: pd.DataFrame, task: Optional[str] = None):
    """(block key dict, rows) per block in order of appearance, optionally of one task."""
    if task is not None:
        frame = frame[frame["task"] == task]
    for key, rows in frame.groupby(BLOCK_KEYS, dropna=False, sort=False):
        yield dict(zip(BLOCK_KEYS, key)), rows


def _split(label: str, separator: str) -> str:
    return label.replace(" [", f"{separator}[", 1)


def _labelled(results: pd.DataFrame, headline: pd.DataFrame, separator: str = " ") -> pd.DataFrame:
    """Done trials of the headline groups, with a `label` column (variant [grid cell])."""
    labels = label_lookup(headline)
    keys = [group_key(row) for _, row in results.iterrows()]
    done = results[(results["status"] == "done").to_numpy() & np.array([k in labels for k in keys], dtype=bool)].copy()
    done["label"] = [text(_split(labels[group_key(row)], separator)) for _, row in done.iterrows()]
    done["_order"] = np.arange(len(done))
    return done


def _curves_of(curves: pd.DataFrame, done: pd.DataFrame, task: str) -> pd.DataFrame:
    """Curve rows of the trials in `done` of one task, with their label and block keys."""
    curves = curves.drop(columns=[c for c in ("suite", "task", "variant", "seed", "grid_cell") if c in curves.columns])
    data = curves.merge(done[["trial_id", "label", "_order", *BLOCK_KEYS]], on="trial_id")
    return data[data["task"] == task]


def _legend_right(ax):
    legend = ax.get_legend()
    if legend is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        legend = ax.get_legend()
        for item in [legend.get_title(), *legend.get_texts()]:
            if item.get_text() == "label":
                item.set_text("variant")


def _order(rows: pd.DataFrame) -> list:
    """Labels in order of first appearance in results (= the headline table's order)."""
    return list(dict.fromkeys(rows.sort_values("_order", kind="stable")["label"]))


def val_ppl_curves(results, curves, headline) -> ReportFigure:
    figure = ReportFigure("val_ppl_curves", "Validation perplexity per epoch (PTB)",
                          "Mean over finished seeds (line) and t-based 95% CI of the mean (band); log scale. "
                          "Diverged, failed and unfinished trials are not drawn.")
    data = _curves_of(curves, _labelled(results, headline), "ptb")
    data = data[data["val_ppl"].notna() & np.isfinite(data["val_ppl"])]
    blocks = list(_blocks(data))
    if not blocks:
        figure.skipped = "no finished PTB trial has validation perplexity curves"
        return figure
    fig, axes = _panels(len(blocks))
    for ax, (key, rows) in zip(axes, blocks):
        sns.lineplot(data=rows, x="epoch", y="val_ppl", hue="label", hue_order=_order(rows), errorbar=_t_interval, err_kws={"alpha": 0.15},
                     marker="o", markersize=4, ax=ax)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=text(block_label(key)), xlabel="epoch", ylabel="validation perplexity")
        _legend_right(ax)
    figure.svg = _svg(fig)
    return figure


def sentiment_rmse(results, curves, headline) -> ReportFigure:
    figure = ReportFigure("sentiment_rmse", "Sentiment test RMSE per epoch",
                          "Deterministic evaluation solid, MC dashed; mean over finished seeds with t-based 95% CI band. "
                          "One panel per cell type (LSTM, GRU) and setting.")
    data = _curves_of(curves, _labelled(results, headline), "sentiment")
    long = data.melt(id_vars=["trial_id", "epoch", "label", "_order", *BLOCK_KEYS], value_vars=[c for c in ("test_rmse", "test_rmse_mc") if c in data.columns],
                     var_name="evaluation", value_name="rmse")
    long = long[long["rmse"].notna()]
    long["evaluation"] = long["evaluation"].map({"test_rmse": "deterministic", "test_rmse_mc": "MC"})
    blocks = list(_blocks(long))
    if not blocks:
        figure.skipped = "no finished sentiment trial has test RMSE curves"
        return figure
    fig, axes = _panels(len(blocks))
    for ax, (key, rows) in zip(axes, blocks):
        sns.lineplot(data=rows, x="epoch", y="rmse", hue="label", hue_order=_order(rows), style="evaluation", style_order=["deterministic", "MC"],
                     errorbar=_t_interval, err_kws={"alpha": 0.12}, ax=ax)
        ax.set(title=text(block_label(key)), xlabel="epoch", ylabel="test RMSE")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend_right(ax)
    figure.svg = _svg(fig)
    return figure


def dropout_heatmap(results) -> ReportFigure:
    figure = ReportFigure("dropout_heatmap", "Test metric over the p_recurrent × p_embedding grid",
                          "Mean over finished seeds of each grid cell (test perplexity for PTB, test RMSE for sentiment; "
                          "lower is better). One panel per variant whose grid varies p_recurrent or p_embedding.")
    done = results[(results["status"] == "done") & (results["grid_cell"] != SELECTED_CELL)].copy()
    panels = []
    for key, rows in _blocks(done):
        metric = PRIMARY.get(key["task"])
        if metric is None:
            continue
        for variant, vrows in rows.groupby("variant", sort=False):
            grids = [json.loads(g) if g.startswith("{") else {} for g in vrows["grid_cell"]]
            if not any({"p_recurrent", "p_embedding"} & set(g) for g in grids) or vrows["grid_cell"].nunique() < 2:
                continue
            rest = [json.dumps({k: v for k, v in g.items() if k not in ("p_recurrent", "p_embedding")}, sort_keys=True) for g in grids]
            for other, prows in vrows.assign(_rest=rest).groupby("_rest", sort=False):
                table = prows.pivot_table(index="p_embedding", columns="p_recurrent", values=metric, aggfunc="mean")
                if table.size >= 2 and table.notna().any().any():
                    label = f"{block_label(key)} · {variant}" + ("" if other == "{}" else f" · {other}")
                    panels.append((label, metric, table))
    if not panels:
        figure.skipped = "no variant ran a grid over p_recurrent or p_embedding"
        return figure
    fig, axes = _panels(len(panels), width=4.8, height=3.8)
    for ax, (label, metric, table) in zip(axes, panels):
        sns.heatmap(table.sort_index(ascending=False), annot=True, fmt=".4g", cmap="viridis_r", ax=ax,
                    cbar_kws={"label": METRIC_NAMES[metric]}, annot_kws={"fontsize": 8})
        ax.set(title=text(label), xlabel="p_recurrent", ylabel="p_embedding")
        ax.grid(False)
    figure.svg = _svg(fig)
    return figure


def wps(results, summary, headline) -> ReportFigure:
    figure = ReportFigure("wps", "Training speed (words per second)",
                          "Mean training words/s over finished seeds (error bar: standard deviation); "
                          "the label gives the ratio to the fastest variant of the same setting.")
    done = _labelled(results, headline, "\n")
    done = done[done["train_wps"].notna()]
    blocks = list(_blocks(done))
    if not blocks:
        figure.skipped = "no finished trial recorded words per second"
        return figure
    fig, axes = _panels(len(blocks), height=max(2.5, max(0.45 * rows["label"].nunique() + 1.2 for _, rows in blocks)))
    for ax, (key, rows) in zip(axes, blocks):
        order = _order(rows)
        sns.barplot(data=rows, y="label", x="train_wps", order=order, hue="label", hue_order=order, errorbar="sd", ax=ax, legend=False)
        means = rows.groupby("label", sort=False)["train_wps"].mean()
        fastest = means.max()
        for i, label in enumerate(order):
            ax.text(means[label], i, f"  ×{means[label] / fastest:.2f}", va="center", fontsize=8)
        ax.set(title=text(block_label(key)), xlabel="training words/s", ylabel="")
        ax.set_xlim(0, fastest * 1.3)
    figure.svg = _svg(fig)
    return figure


def significance_heatmap(significance, headline) -> ReportFigure:
    figure = ReportFigure("significance_heatmap", "Pairwise significance (Holm-adjusted p-values)",
                          "Holm-adjusted p-value of each pair on the setting's primary test metric (test perplexity or test RMSE); "
                          "across seeds (paired t where the pair shares ≥ 2 seeds, else Welch). Where no pair of a setting has "
                          "an across-seed p-value (too few seeds), the panel shows the sentence-level paired bootstrap instead, "
                          "Holm-adjusted over its own family. Blank: not computable.")
    panels = []
    for key, rows in _blocks(headline):
        metric = PRIMARY.get(key["task"])
        if metric is None or len(rows) < 2:
            continue
        index = {(e, v, g): i for i, (e, v, g) in enumerate(zip(rows["experiment"].map(canon), rows["variant"], rows["grid_cell"]))}
        labels = list(rows["label"])
        sig = significance
        for column, value in key.items():
            sig = sig[sig[column].map(canon) == canon(value)]
        sig = sig[sig["metric"] == metric]
        source = "holm_p" if sig["holm_p"].notna().any() else "sentence_bootstrap_holm_p"
        matrix = np.full((len(labels), len(labels)), np.nan)
        for _, row in sig.iterrows():
            i = index.get((canon(row["experiment_a"]), row["a"], row["grid_cell_a"]))
            j = index.get((canon(row["experiment_b"]), row["b"], row["grid_cell_b"]))
            if i is not None and j is not None:
                matrix[i, j] = matrix[j, i] = row[source]
        if np.isnan(matrix).all():
            continue
        title = f"{block_label(key)}\n{METRIC_NAMES[metric]}" + ("" if source == "holm_p" else ", sentence bootstrap")
        labels = [text(_split(label, "\n")) for label in labels]
        # symmetric: the lower triangle says it all (row i against the columns before it)
        panels.append((title, pd.DataFrame(matrix[1:, :-1], index=labels[1:], columns=labels[:-1])))
    if not panels:
        figure.skipped = "no setting has two variants with a computable p-value"
        return figure
    size = max(len(t) for _, t in panels) + 1
    fig, axes = _panels(len(panels), width=max(4.5, 0.7 * size + 3), height=max(3.5, 0.6 * size + 2.5))
    for ax, (title, table) in zip(axes, panels):
        upper = np.triu(np.ones(table.shape, dtype=bool), k=1)
        sns.heatmap(table, mask=table.isna().to_numpy() | upper, annot=True, fmt=".2g", vmin=0, vmax=1, cmap="rocket", ax=ax,
                    cbar_kws={"label": "adjusted p"}, annot_kws={"fontsize": 8}, square=True)
        ax.set(title=text(title), xlabel="", ylabel="")
        ax.grid(False)
        ax.tick_params(axis="x", labelrotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    figure.svg = _svg(fig)
    return figure


def build_figures(results: pd.DataFrame, curves: pd.DataFrame, summary: pd.DataFrame, headline: pd.DataFrame,
                  significance: pd.DataFrame) -> list[ReportFigure]:
    """results/curves: results.csv/curves.csv frames; summary, headline, significance from
    reports.summary. Returns the five figures in a fixed order. A figure that raises is returned
    skipped with the error, so one bad figure does not cost the whole report."""
    results = prepare(results)
    curves = curves.copy()
    for column in ("epoch", "val_ppl", "test_rmse", "test_rmse_mc"):
        if column not in curves.columns:
            curves[column] = np.nan
        curves[column] = pd.to_numeric(curves[column], errors="coerce")
    makers = [
        ("val_ppl_curves", lambda: val_ppl_curves(results, curves, headline)),
        ("sentiment_rmse", lambda: sentiment_rmse(results, curves, headline)),
        ("dropout_heatmap", lambda: dropout_heatmap(results)),
        ("wps", lambda: wps(results, summary, headline)),
        ("significance_heatmap", lambda: significance_heatmap(significance, headline)),
    ]
    figures = []
    with matplotlib.rc_context(STYLE), sns.axes_style("whitegrid"), sns.color_palette("colorblind"):
        for name, make in makers:
            try:
                figures.append(make())
            except Exception as exc:  # a report with one figure missing beats no report
                figures.append(ReportFigure(name, name.replace("_", " "), "", skipped=f"could not be drawn: {type(exc).__name__}: {exc}"))
    return figures
