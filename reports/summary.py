"""Summary and significance tables of a results folder (results.csv + results.sqlite).

A *group* is one variant in one setting: (suite, task, cell, hidden_size, num_layers, experiment,
variant, grid_cell); its trials differ only by seed. A *block* is (suite, task, cell, hidden_size,
num_layers): the groups compared against each other (one Table-1-like table). Model size is part of
the block so that, say, medium and large PTB models of one suite are never averaged together; the
experiment (a suite's [[experiment]] name, when results.csv has the column) is part of the group so
that two experiments are never averaged together either, but they are compared.

Selection: where results.csv has a `selected` column (export.py: in an experiment with selection
'best_val', per variant and seed only the grid cell with the best validation perplexity is
selected), the selected trials of a variant that ran several grid cells form one more group, with
grid_cell 'selected' (`with_selection`); that group stands for the variant in the headline and in
the comparisons, in place of its individual cells (which summary.csv still lists).

Only trials with status 'done' enter means, CIs and tests; diverged, failed, pending and running
trials are counted per group (n_diverged, ...) and never averaged.

summary_frame(results)                        one row per group: n, mean, std, 95% CI per metric,
                                              paper value and difference, trial counts by status
significance_frame(results, sample_losses)    one row per pair of groups in a block and metric
headline(summary)                             the groups a Table-1-like table shows, one per variant
"""

from __future__ import annotations

import json
import math
from typing import Callable, Optional

import numpy as np
import pandas as pd

from . import statistics as st

BLOCK_KEYS = ["suite", "task", "cell", "hidden_size", "num_layers"]
GROUP_KEYS = BLOCK_KEYS + ["experiment", "variant", "grid_cell"]
STATUSES = ("done", "diverged", "failed", "running", "pending")
# Metrics summarised per group (lower is better for perplexity / RMSE, higher for *_wps).
METRICS = ("val_ppl", "test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "mc_eval_wps", "wall_s")
# Metrics compared between groups, all lower-is-better.
COMPARED = ("test_ppl", "val_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc")
TASK_METRICS = {"ptb": ("val_ppl", "test_ppl", "test_ppl_mc"), "sentiment": ("test_rmse", "test_rmse_mc")}
PRIMARY = {"ptb": "test_ppl", "sentiment": "test_rmse"}
MC_METRICS = {"test_ppl_mc", "test_rmse_mc", "mc_eval_wps"}
# Paper reference columns results.csv may carry (NaN where the paper has none): paper_M is set
# beside metric M; paper_wps beside train_wps.
PAPER_METRICS = ("val_ppl", "test_ppl", "test_ppl_mc")
# metric -> (kind of sample_losses, transform, unit of the difference) for the sentence bootstrap
SENTENCE_TESTS = {
    "test_ppl": ("det", "log", "log-perplexity (nats/token)"),
    "test_ppl_mc": ("mc", "log", "log-perplexity (nats/token)"),
    "test_rmse": ("det", "sqrt", "RMSE"),
    "test_rmse_mc": ("mc", "sqrt", "RMSE"),
}
# grid_cell of the pseudo-group of a variant's selected trials (see with_selection)
SELECTED_CELL = "selected"
SampleLosses = Callable[[str, str], Optional[tuple]]  # (trial_id, kind) -> (idx, loss, count) or None


def grid_label(grid_cell) -> str:
    """'{"p_recurrent": 0.5}' -> 'p_recurrent=0.5'; '' for no grid cell."""
    if grid_cell is None or (isinstance(grid_cell, float) and math.isnan(grid_cell)):
        return ""
    if grid_cell == SELECTED_CELL:
        return "selected cell per seed"
    try:
        cell = json.loads(grid_cell) if isinstance(grid_cell, str) else dict(grid_cell)
    except (ValueError, TypeError):
        return str(grid_cell)
    if not isinstance(cell, dict):
        return str(grid_cell)
    return ", ".join(f"{k}={v}" for k, v in cell.items())


def group_label(variant, grid_cell, separator: str = " ", experiment: str = "") -> str:
    """'variational-tied [p_recurrent=0.5]'; the bare variant name without a grid cell; with
    ' (experiment)' appended when given."""
    grid = grid_label(grid_cell)
    label = f"{variant}{separator}[{grid}]" if grid else str(variant)
    return f"{label} ({experiment})" if experiment else label


def canon(value) -> str:
    if not _present(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _joined(frame: pd.DataFrame, columns: list) -> pd.Series:
    return frame[columns].map(canon).agg("\x1f".join, axis=1) if len(frame) else pd.Series(dtype=object)


def group_key(row) -> tuple:
    """A hashable key of a group from any row (dict / Series) with the group key columns."""
    return tuple(canon(row[k]) for k in GROUP_KEYS)


def add_labels(summary: pd.DataFrame) -> pd.DataFrame:
    """summary with a `label` column: group_label, plus the experiment's name where the same
    variant and grid cell of a block come from more than one experiment."""
    if summary.empty:
        return summary.assign(label=pd.Series(dtype=object))
    keys = _joined(summary, BLOCK_KEYS + ["variant", "grid_cell"])
    clashing = set(keys[keys.duplicated(keep=False)])
    labels = [group_label(v, g, experiment=e if k in clashing else "")
              for v, g, e, k in zip(summary["variant"], summary["grid_cell"], summary["experiment"], keys)]
    return summary.assign(label=labels)


def label_lookup(summary: pd.DataFrame) -> dict:
    """group_key -> label for every group of a labelled summary."""
    return {group_key(row): row["label"] for _, row in summary.iterrows()}


def block_label(key: dict) -> str:
    """'suite · ptb · LSTM 2×200' for a block key."""
    size = ""
    if _present(key.get("num_layers")) and _present(key.get("hidden_size")):
        size = f" {int(key['num_layers'])}×{int(key['hidden_size'])}"
    return f"{key['suite']} · {key['task']} · {str(key['cell']).upper()}{size}"


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def prepare(results: pd.DataFrame) -> pd.DataFrame:
    """results.csv as read by pandas -> the same rows with every column the report uses present
    (missing metric / key columns added as NaN), grid_cell normalised to a string ('{}' for none)."""
    frame = results.copy()
    for column in GROUP_KEYS + ["seed", "status", "trial_id", "mc_samples", "error", "epochs_run"] + list(METRICS):
        if column not in frame.columns:
            frame[column] = np.nan
    frame["grid_cell"] = frame["grid_cell"].map(lambda g: "{}" if not _present(g) or g == "" else str(g))
    for column in ("suite", "task", "cell", "experiment", "variant", "status"):
        frame[column] = frame[column].map(lambda v: "" if not _present(v) else str(v)).astype(object)
    for column in list(METRICS) + [c for c in frame.columns if c.startswith("paper_")]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.reset_index(drop=True)


def with_selection(results: pd.DataFrame) -> pd.DataFrame:
    """results plus, where results.csv has a `selected` column, a pseudo-group per block and variant
    that ran two or more grid cells: copies of its selected trials (one per seed, possibly from
    different cells) with grid_cell = SELECTED_CELL, so that the selected configuration is
    summarised, compared and shown in the headline like any other group. Without the column, or
    without selected trials, results unchanged."""
    results = prepare(results)
    if "selected" not in results.columns or results.empty:
        return results
    extra = []
    for _, rows in results.groupby(BLOCK_KEYS + ["experiment", "variant"], dropna=False, sort=False):
        marked = rows["selected"].map(_truthy)
        # all selected: no selection took place (export.py marks every trial outside 'best_val')
        if rows["grid_cell"].nunique() >= 2 and marked.any() and not marked.all():
            chosen = rows[marked]
            extra.append(chosen.assign(_cell=chosen["grid_cell"], grid_cell=SELECTED_CELL))
    return pd.concat([results, *extra], ignore_index=True) if extra else results


def superseded(results: pd.DataFrame) -> pd.Series:
    """Rows of individual grid cells whose variant has a 'selected' group (with_selection): they
    do not count in comparisons; the selected group does."""
    owners = set(_joined(results[results["grid_cell"] == SELECTED_CELL], BLOCK_KEYS + ["experiment", "variant"]))
    if not owners:
        return pd.Series(False, index=results.index)
    return _joined(results, BLOCK_KEYS + ["experiment", "variant"]).isin(owners) & (results["grid_cell"] != SELECTED_CELL)


def groups(results: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """(group key tuple, its rows) in order of first appearance."""
    keyed = results.assign(_order=np.arange(len(results)))
    out = [(key if isinstance(key, tuple) else (key,), rows) for key, rows in keyed.groupby(GROUP_KEYS, dropna=False, sort=False)]
    return sorted(out, key=lambda item: item[1]["_order"].min())


def applicable(metric: str, rows: pd.DataFrame) -> bool:
    """Whether a compared metric means something for a group: some trial reported it, or the
    group's task measures it (and, for MC metrics, the group draws MC samples)."""
    if rows[metric].notna().any():
        return True
    task = rows["task"].iloc[0]
    if task not in TASK_METRICS or metric not in TASK_METRICS[task]:
        return False
    if metric in MC_METRICS:
        return bool((pd.to_numeric(rows["mc_samples"], errors="coerce").fillna(0) > 0).any())
    return True


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """results: results.csv rows (see `prepare`). One row per group, in order of first appearance:

    group keys, n_trials, n_done, n_diverged, n_failed, n_running, n_pending, n_seeds (= n_done),
    seeds (the done seeds, space-separated), then for every metric M of METRICS:
    M_n (done trials with a value), M_mean, M_std (ddof=1), M_ci_low, M_ci_high (t-based 95% CI);
    for M in val_ppl, test_ppl, test_ppl_mc (and any other paper_* column present): paper_M (the
    paper's value, NaN where none) and M_paper_diff = M_mean - paper_M; other paper_* columns
    (paper_wps, beside train_wps) as they are; `selected` when results has that column; note; label."""
    results = prepare(results)
    paper = [m for m in METRICS if m in PAPER_METRICS or f"paper_{m}" in results.columns]
    paper_other = [c for c in results.columns if c.startswith("paper_") and c[len("paper_"):] not in METRICS]
    rows = []
    for key, trials in groups(results):
        done = trials[trials["status"] == "done"]
        row = dict(zip(GROUP_KEYS, key))
        row["n_trials"] = len(trials)
        for status in STATUSES:
            row[f"n_{status}"] = int((trials["status"] == status).sum())
        row["n_seeds"] = row["n_done"]
        row["seeds"] = " ".join(str(int(s)) for s in sorted(pd.to_numeric(done["seed"], errors="coerce").dropna().unique()))
        for metric in METRICS:
            d = st.describe(done[metric].to_numpy(dtype=float))
            row.update({f"{metric}_n": d.n, f"{metric}_mean": d.mean, f"{metric}_std": d.std,
                        f"{metric}_ci_low": d.ci_low, f"{metric}_ci_high": d.ci_high})
        for metric in paper:
            column = f"paper_{metric}"
            values = trials[column].dropna() if column in trials.columns else pd.Series(dtype=float)
            row[column] = float(values.iloc[0]) if len(values) else np.nan
            row[f"{metric}_paper_diff"] = row[f"{metric}_mean"] - row[column]
        for column in paper_other:
            values = trials[column].dropna()
            row[column] = float(values.iloc[0]) if len(values) else np.nan
        if "selected" in results.columns:
            row["selected"] = bool(trials["selected"].map(_truthy).any())
        notes = []
        if row["grid_cell"] == SELECTED_CELL:
            notes.append("cells: " + ", ".join(f"seed {_int(seed)}: {grid_label(cell)}" for seed, cell in zip(trials["seed"], trials["_cell"])))
        if row["n_done"] == 0:
            notes.append("no finished trials")
        elif row["n_done"] == 1:
            notes.append("1 seed: no std or CI")
        excluded = [f"{row[f'n_{s}']} {s}" for s in ("diverged", "failed") if row[f"n_{s}"]]
        if excluded:
            notes.append(", ".join(excluded) + " (not averaged)")
        unfinished = [f"{row[f'n_{s}']} {s}" for s in ("running", "pending") if row[f"n_{s}"]]
        if unfinished:
            notes.append(", ".join(unfinished) + " (missing)")
        row["note"] = "; ".join(notes)
        rows.append(row)
    columns = GROUP_KEYS + ["n_trials"] + [f"n_{s}" for s in STATUSES] + ["n_seeds", "seeds"]
    columns += [f"{m}_{s}" for m in METRICS for s in ("n", "mean", "std", "ci_low", "ci_high")]
    columns += [c for m in paper for c in (f"paper_{m}", f"{m}_paper_diff")] + paper_other
    columns += (["selected"] if "selected" in results.columns else []) + ["note"]
    return add_labels(pd.DataFrame(rows, columns=columns))


def _int(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return str(value)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return _present(value) and bool(value)


SIGNIFICANCE_COLUMNS = [
    "suite", "task", "cell", "hidden_size", "num_layers", "a", "grid_cell_a", "experiment_a", "b", "grid_cell_b", "experiment_b", "metric",
    "n_a", "n_b", "mean_a", "mean_b", "diff", "diff_ci_low", "diff_ci_high", "welch_p", "mannwhitney_p",
    "paired_n", "paired_t_p", "wilcoxon_p", "hedges_g", "primary_test", "primary_p", "holm_p", "holm_m", "holm_family",
    "sentence_bootstrap_seed", "sentence_bootstrap_n", "sentence_bootstrap_unit", "sentence_bootstrap_diff",
    "sentence_bootstrap_ci_low", "sentence_bootstrap_ci_high", "sentence_bootstrap_p", "sentence_bootstrap_holm_p", "note",
]


def significance_frame(results: pd.DataFrame, sample_losses: Optional[SampleLosses] = None) -> pd.DataFrame:
    """results: results.csv rows; sample_losses(trial_id, kind) -> (idx, loss, count) arrays or None.

    One row per block, unordered pair of groups (a before b in order of appearance; a variant's
    individual grid cells give way to its 'selected' group where it has one) and compared
    metric (test_ppl, val_ppl, test_ppl_mc, test_rmse, test_rmse_mc) that applies to both groups.
    Values are the done trials' per-seed values. diff = mean_a - mean_b (negative: a is lower, i.e.
    better); diff_ci_* the seeded percentile bootstrap 95% CI of it; welch_p, mannwhitney_p across
    seeds; paired_n seeds both groups finished, and paired_t_p, wilcoxon_p over them, only where the
    two groups share their grid cell (same suite, task, cell, grid cell and seed = paired); hedges_g
    of a vs b.

    Family for Holm: every row's primary_p, which is paired_t_p where defined (≥ 2 shared seeds),
    else welch_p (primary_test says which); holm_p is the Holm-Bonferroni adjusted primary_p over all
    rows of the frame that have one (holm_m of them; holm_family says so in words).

    Sentence bootstrap (test metrics only, works with one seed): the two groups' trials of the
    smallest seed both finished (sentence_bootstrap_seed; if they share none, each group's smallest
    seed, noted), their per-sentence losses resampled jointly (statistics.sentence_bootstrap).
    sentence_bootstrap_holm_p adjusts its p-values as a second family over all rows."""
    results = prepare(results)
    results = results[~superseded(results)]
    rows = []
    all_groups = groups(results)
    blocks: dict[tuple, list] = {}
    for key, trials in all_groups:
        blocks.setdefault(key[: len(BLOCK_KEYS)], []).append((key, trials))
    for block_key, members in blocks.items():
        for i, (key_a, trials_a) in enumerate(members):
            for key_b, trials_b in members[i + 1:]:
                for metric in COMPARED:
                    if applicable(metric, trials_a) and applicable(metric, trials_b):
                        rows.append(_compare(block_key, key_a, trials_a, key_b, trials_b, metric, sample_losses))
    frame = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)
    if len(frame):
        frame["holm_p"] = st.holm(frame["primary_p"].to_numpy(dtype=float))
        frame["holm_m"] = int(frame["primary_p"].notna().sum())
        frame["holm_family"] = (f"primary_p of the {frame['holm_m'].iloc[0]} rows of significance.csv that have one "
                                "(every pair of groups x metric of this report)")
        frame["sentence_bootstrap_holm_p"] = st.holm(frame["sentence_bootstrap_p"].to_numpy(dtype=float))
    return frame


def _per_seed(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Done trials' values of `metric` indexed by seed (first trial of a seed if repeated)."""
    done = trials[(trials["status"] == "done") & trials[metric].notna()]
    series = pd.Series(done[metric].to_numpy(dtype=float), index=pd.to_numeric(done["seed"], errors="coerce").to_numpy())
    return series[~series.index.duplicated()].sort_index()


def _compare(block_key, key_a, trials_a, key_b, trials_b, metric, sample_losses) -> dict:
    a, b = _per_seed(trials_a, metric), _per_seed(trials_b, metric)
    row = dict(zip(BLOCK_KEYS, block_key))
    row.update(a=key_a[-2], grid_cell_a=key_a[-1], experiment_a=key_a[-3], b=key_b[-2], grid_cell_b=key_b[-1], experiment_b=key_b[-3], metric=metric,
               n_a=len(a), n_b=len(b), mean_a=a.mean() if len(a) else np.nan, mean_b=b.mean() if len(b) else np.nan)
    notes = []
    for name, series, trials in (("a", a, trials_a), ("b", b, trials_b)):
        if len(series) == 0:
            notes.append(f"{name} has no finished {metric}")
        bad = [f"{int((trials['status'] == s).sum())} {s}" for s in ("diverged", "failed") if (trials["status"] == s).any()]
        if bad:
            notes.append(f"{name}: {', '.join(bad)} excluded")
    interval = st.bootstrap_diff_ci(a.to_numpy(), b.to_numpy())
    welch, mw = st.welch(a.to_numpy(), b.to_numpy()), st.mann_whitney(a.to_numpy(), b.to_numpy())
    row.update(diff=interval.estimate, diff_ci_low=interval.low, diff_ci_high=interval.high,
               welch_p=welch.p, mannwhitney_p=mw.p, hedges_g=st.hedges_g(a.to_numpy(), b.to_numpy()))
    notes += [welch.note, mw.note]
    if key_a[-1] == key_b[-1]:
        shared = a.index.intersection(b.index)
        paired_t, wilcoxon = st.paired_t(a[shared].to_numpy(), b[shared].to_numpy()), st.wilcoxon(a[shared].to_numpy(), b[shared].to_numpy())
        row.update(paired_n=len(shared), paired_t_p=paired_t.p, wilcoxon_p=wilcoxon.p)
        if len(shared) >= 2 or min(len(a), len(b)) >= 2:
            notes += [paired_t.note, wilcoxon.note]
    else:
        row.update(paired_n=0, paired_t_p=np.nan, wilcoxon_p=np.nan)
    if not math.isnan(row["paired_t_p"]):
        row.update(primary_test="paired t", primary_p=row["paired_t_p"])
    elif not math.isnan(row["welch_p"]):
        row.update(primary_test="welch", primary_p=row["welch_p"])
    else:
        row.update(primary_test="", primary_p=np.nan)
    row.update(sentence_bootstrap_seed=np.nan, sentence_bootstrap_n=0, sentence_bootstrap_unit="", sentence_bootstrap_diff=np.nan,
               sentence_bootstrap_ci_low=np.nan, sentence_bootstrap_ci_high=np.nan, sentence_bootstrap_p=np.nan)
    if metric in SENTENCE_TESTS and sample_losses is not None and len(a) and len(b):
        notes.append(_sentence_test(row, trials_a, trials_b, a, b, metric, sample_losses))
    row["note"] = "; ".join(dict.fromkeys(n for n in notes if n))
    return row


def _sentence_test(row, trials_a, trials_b, a, b, metric, sample_losses) -> str:
    kind, transform, unit = SENTENCE_TESTS[metric]
    shared = a.index.intersection(b.index)
    seed_a, seed_b = (shared[0], shared[0]) if len(shared) else (a.index[0], b.index[0])

    def trial_of(trials, seed):
        done = trials[(trials["status"] == "done") & (pd.to_numeric(trials["seed"], errors="coerce") == seed) & trials[metric].notna()]
        return done["trial_id"].iloc[0]

    losses_a, losses_b = sample_losses(trial_of(trials_a, seed_a), kind), sample_losses(trial_of(trials_b, seed_b), kind)
    if losses_a is None or losses_b is None or not len(losses_a[0]) or not len(losses_b[0]):
        return f"no per-sentence '{kind}' losses stored: sentence bootstrap unavailable"
    result = st.sentence_bootstrap(losses_a, losses_b, transform=transform)
    row.update(sentence_bootstrap_seed=int(seed_a) if seed_a == seed_b else np.nan, sentence_bootstrap_n=result.n,
               sentence_bootstrap_unit=unit, sentence_bootstrap_diff=result.diff, sentence_bootstrap_ci_low=result.low,
               sentence_bootstrap_ci_high=result.high, sentence_bootstrap_p=result.p)
    notes = [result.note]
    if seed_a != seed_b:
        notes.append(f"no shared seed: sentence bootstrap compares seed {int(seed_a)} of a with seed {int(seed_b)} of b")
    return "; ".join(n for n in notes if n)


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The groups a Table-1-like table shows, with a `headline_note`. Per block and variant: the
    pseudo-group of its selected trials where results.csv marks them (with_selection); else, where a
    variant ran several grid cells of a task with validation perplexity, the cell with the lowest mean
    val_ppl; else every grid cell (sentiment has no validation set to select on)."""
    if summary.empty:
        return summary.assign(headline_note=pd.Series(dtype=object))
    picked = []
    for _, rows in summary.groupby(BLOCK_KEYS + ["experiment", "variant"], dropna=False, sort=False):
        rows = rows.assign(headline_note="")
        if (rows["grid_cell"] == SELECTED_CELL).any():
            chosen = rows[rows["grid_cell"] == SELECTED_CELL].assign(headline_note=f"per seed, the grid cell marked selected (of {len(rows) - 1})")
        elif len(rows) > 1 and rows["val_ppl_mean"].notna().any():
            best = rows["val_ppl_mean"].idxmin()
            chosen = rows.loc[[best]].assign(headline_note=f"grid cell with the lowest mean validation perplexity of {len(rows)}")
        else:
            chosen = rows
        picked.append(chosen)
    return pd.concat(picked).sort_index()
