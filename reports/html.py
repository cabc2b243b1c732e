"""report.html: one self-contained page (inline CSS, figures as base64 SVG data URIs, no network).

Every string that comes from data — suite, variant and grid-cell names, descriptions, errors,
environment — goes through html.escape (`esc`). Sections: header with the runs' environment,
headline tables laid out like Table 1 of Gal & Ghahramani (2016), trial status with what is
missing or broken, significance tests, figures, variants.

A small inline script in <head>, run on load, counts the figures that rendered with a non-zero size and
writes data-figures-ok / data-figures-total onto <body> (the browser test reads them); it also
counts script errors into data-errors.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from typing import Iterable, Optional

import pandas as pd

from .figures import METRIC_NAMES, ReportFigure
from .summary import BLOCK_KEYS, STATUSES, block_label, group_key, group_label, label_lookup

CSS = """
:root { --fg: #1d2125; --muted: #5b6470; --line: #d8dde3; --best: #e6f4ea; --bad: #fdecea; --warn: #fff6e0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0 auto;
       max-width: 1200px; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
p.muted, .muted { color: var(--muted); } nav a { margin-right: .9rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .55rem; text-align: right; vertical-align: top; }
th { background: #f4f6f8; font-weight: 600; } th:first-child, td:first-child, td.text { text-align: left; }
tr.mc td:first-child { padding-left: 1.4rem; }
tr.bad td { background: var(--bad); } tr.warn td { background: var(--warn); } td.sig { font-weight: 700; }
tr td.best, tr.warn td.best, tr.bad td.best { background: var(--best); font-weight: 700; }
tr.comparison td { border-bottom: none; } tr.comparison.last td { border-bottom: 1px solid var(--line); }
tr.note-row td { color: var(--muted); font-size: .82em; text-align: left; padding-top: 0; border-bottom: 1px solid var(--line); }
.paper { color: var(--muted); } .delta { color: var(--muted); font-size: .85em; white-space: nowrap; }
.note { color: var(--muted); font-size: .85em; text-align: left; max-width: 28rem; }
.callout { border-left: 4px solid #e0a800; background: var(--warn); padding: .5rem .8rem; margin: .6rem 0; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figcaption { color: var(--muted); margin-top: .3rem; } details summary { cursor: pointer; color: var(--muted); }
pre { white-space: pre-wrap; font-size: .85em; background: #f4f6f8; padding: .4rem; max-width: 60rem; text-align: left; }
.scroll { overflow-x: auto; } code { font-size: .9em; }
"""

CHECK_SCRIPT = """
(function () {
  var errors = 0;
  window.addEventListener('error', function () { errors += 1; if (document.body) { document.body.setAttribute('data-errors', String(errors)); } });
  window.addEventListener('load', function () {
    var images = document.querySelectorAll('img.figure'), ok = 0;
    for (var i = 0; i < images.length; i++) {
      var box = images[i].getBoundingClientRect();
      if (images[i].complete && images[i].naturalWidth > 0 && box.width > 0 && box.height > 0) { ok += 1; }
    }
    document.body.setAttribute('data-figures-total', String(images.length));
    document.body.setAttribute('data-figures-ok', String(ok));
    document.body.setAttribute('data-errors', String(errors));
  });
})();
"""


def esc(value) -> str:
    """Any value as escaped HTML text ('' for None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return html.escape(str(value), quote=True)


def _nan(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def number(value, metric: str = "") -> str:
    """A metric value formatted for its kind: perplexity 1 decimal, RMSE 4, words/s as 5.5K."""
    if _nan(value):
        return "–"
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if metric.endswith("wps"):
        return f"{value / 1000:.1f}K" if abs(value) >= 1000 else f"{value:.0f}"
    if "rmse" in metric:
        return f"{value:.4f}"
    if "ppl" in metric:
        return f"{value:.1f}" if abs(value) < 10000 else f"{value:.3g}"
    return f"{value:.3g}"


def p_value(p) -> str:
    if _nan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def mean_std(row, metric: str) -> str:
    mean, std, n = row.get(f"{metric}_mean"), row.get(f"{metric}_std"), row.get(f"{metric}_n", 0)
    if _nan(mean):
        return "–"
    if _nan(std):
        return f"{number(mean, metric)} <span class='delta'>({int(n)} seed)</span>"
    if metric.endswith("wps") and abs(mean) >= 1000:  # one scale for both: 5.52K ± 0.13K
        return f"{mean / 1000:.2f}K ± {std / 1000:.2f}K"
    return f"{number(mean, metric)} ± {number(std, metric)}"


def _table(header: Iterable[str], rows: Iterable[str], css_class: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<div class='scroll'><table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


# ---------------------------------------------------------------- header


def _environment(runs: list[dict]) -> str:
    if not runs:
        return "<p class='muted'>No run recorded in results.sqlite (environment unknown).</p>"
    rows = []
    for run in runs:
        try:
            env = json.loads(run.get("environment") or "{}")
        except ValueError:
            env = {}
        try:
            argv = " ".join(json.loads(run.get("argv") or "[]"))
        except ValueError:
            argv = run.get("argv") or ""
        started, finished = (_time(run.get(k)) for k in ("started_at", "finished_at"))
        rows.append("<tr>" + "".join(f"<td class='text'>{v}</td>" for v in (
            esc(run.get("id")), esc(run.get("suite")), esc(started), esc(finished) or "<em>not finished</em>", esc(env.get("torch")),
            esc(env.get("python")), esc(env.get("device")), esc(env.get("device_name")), esc(env.get("threads")),
            f"<code>{esc((env.get('git_commit') or '')[:12])}</code>", f"<code>{esc(argv)}</code>")) + "</tr>")
    return _table(["run", "suite", "started (UTC)", "finished (UTC)", "torch", "python", "device", "device name", "threads", "git commit", "command"], rows)


def _time(value) -> str:
    if _nan(value):
        return ""
    try:
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        return str(value)


# ---------------------------------------------------------------- headline


def _columns_for(task: str, block: pd.DataFrame) -> list[tuple]:
    """(header, det metric, MC metric, paper column for det, paper column for MC, higher is better)."""
    if task == "ptb":
        columns = [("validation perplexity", "val_ppl", None, "paper_val_ppl", None, False),
                   ("test perplexity", "test_ppl", "test_ppl_mc", "paper_test_ppl", "paper_test_ppl_mc", False)]
    elif task == "sentiment":
        columns = [("test RMSE", "test_rmse", "test_rmse_mc", None, None, False)]
    else:
        columns = []
    columns += [("train words/s", "train_wps", None, "paper_wps", None, True), ("eval words/s", "eval_wps", "mc_eval_wps", None, None, True)]

    def shown(column):  # a paper column only where the paper has a number for this block
        return column if column and column in block.columns and block[column].notna().any() else None

    return [(h, d, m, shown(paper), shown(paper_mc), hi) for h, d, m, paper, paper_mc, hi in columns]


def headline_tables(headline: pd.DataFrame) -> str:
    if headline.empty:
        return "<p class='callout'>No trials in this folder yet.</p>"
    out = []
    for key, block in headline.groupby(BLOCK_KEYS, dropna=False, sort=False):
        key = dict(zip(BLOCK_KEYS, key))
        columns = _columns_for(key["task"], block)
        lines = []  # (label, row, is_mc)
        for _, row in block.iterrows():
            lines.append((row["label"], row, False))
            if any(m and (row.get(f"{m}_n", 0) > 0) for _, _, m, _, _, _ in columns):
                lines.append((row["label"] + " (MC)", row, True))
        best = {}
        for i, (_, d, m, _, _, higher) in enumerate(columns):
            values = [(line[1].get(f"{m if line[2] else d}_mean") if (m if line[2] else d) else None) for line in lines]
            finite = [v for v in values if not _nan(v) and math.isfinite(v)]
            if len(finite) >= 2:
                best[i] = max(finite) if higher else min(finite)
        header = ["variant", "seeds"]
        for h, d, m, paper, paper_mc, higher in columns:
            header.append(f"{esc(h)} {'↑' if higher else '↓'}")
            if paper or paper_mc:
                header.append("paper")
        header.append("notes")
        rows = []
        for label, row, mc in lines:
            cells = [f"<td class='text'>{esc(label)}</td>", f"<td>{int(row['n_done'])}/{int(row['n_trials'])}</td>"]
            for i, (h, d, m, paper, paper_mc, higher) in enumerate(columns):
                metric = m if mc else d
                value = row.get(f"{metric}_mean") if metric else None
                marked = metric is not None and i in best and not _nan(value) and value == best[i]
                cells.append(f"<td class='{'best' if marked else ''}'>{mean_std(row, metric) if metric else '–'}</td>")
                if paper or paper_mc:
                    column = paper_mc if mc else paper
                    reference = row.get(column) if column else None
                    if _nan(reference):
                        cells.append("<td class='paper'>–</td>")
                    else:
                        mean = row.get(f"{metric}_mean", float("nan")) if metric else float("nan")
                        if _nan(mean):
                            shown = ""
                        elif metric.endswith("wps"):  # other hardware: a ratio says more than a difference
                            shown = f" <span class='delta'>(×{mean / reference:.2f})</span>" if reference else ""
                        else:
                            shown = f" <span class='delta'>({mean - reference:+.1f})</span>"
                        cells.append(f"<td class='paper'>{number(reference, metric)}{shown}</td>")
            notes = [row.get("headline_note") or "", "" if mc else row.get("note") or ""]
            cells.append(f"<td class='note'>{esc('; '.join(n for n in notes if n))}</td>")
            css = "mc" if mc else ("bad" if row["n_done"] == 0 else "warn" if row["n_done"] < row["n_trials"] else "")
            rows.append(f"<tr class='{css}'>{''.join(cells)}</tr>")
        out.append(f"<h3>{esc(block_label(key))}</h3>" + _table(header, rows, "headline"))
    legend = ("<p class='muted'>Mean ± standard deviation over finished seeds (seeds: finished/planned). Highlighted: best in its column "
              "(↓ lower is better, ↑ higher). MC rows: Monte Carlo evaluation (averaged over mc_samples dropout masks). "
              "Paper: Gal &amp; Ghahramani (2016) where results.csv carries its value, with our mean minus the paper's in brackets "
              "(for words/s, ours divided by the paper's, whose hardware differs). "
              "Diverged and failed trials are never averaged; see Trial status.</p>")
    return legend + "".join(out)


# ---------------------------------------------------------------- status


def _first_line(error) -> str:
    """First line of an error; for a Python traceback its last line (the exception)."""
    if _nan(error) or not str(error).strip():
        return ""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0].strip()


def status_section(results: pd.DataFrame, summary: pd.DataFrame) -> str:
    counts = {s: int((results["status"] == s).sum()) for s in STATUSES}
    other = len(results) - sum(counts.values())
    line = ", ".join(f"{n} {s}" for s, n in counts.items() if n) + (f", {other} with another status" if other else "")
    out = [f"<p>{len(results)} trials: {esc(line) or 'none'}.</p>"]
    unfinished = counts["pending"] + counts["running"]
    if unfinished:
        out.append(f"<p class='callout'>Partial results: {unfinished} trial{'s' if unfinished != 1 else ''} not finished "
                   "(listed below); tables and figures show the finished ones.</p>")
    rows = []
    for _, row in summary.iterrows():
        css = "bad" if row["n_diverged"] + row["n_failed"] else "warn" if row["n_pending"] + row["n_running"] else ""
        cells = [f"<td class='text'>{esc(block_label(row))}</td>", f"<td class='text'>{esc(row['label'])}</td>"]
        cells += [f"<td>{int(row[f'n_{s}'])}</td>" for s in STATUSES]
        cells.append(f"<td class='text'>{esc(row['seeds'])}</td>")
        rows.append(f"<tr class='{css}'>{''.join(cells)}</tr>")
    out.append(_table(["setting", "variant", *STATUSES, "finished seeds"], rows))
    labels = label_lookup(summary)
    problems = results[results["status"] != "done"]
    if len(problems):
        out.append("<h3>Trials not finished or not successful</h3>")
        rows = []
        for _, row in problems.iterrows():
            error = row.get("error")
            detail = f"{esc(_first_line(error))}" + (f"<details><summary>full error</summary><pre>{esc(error)}</pre></details>" if not _nan(error) and str(error).strip() else "")
            css = "bad" if row["status"] in ("diverged", "failed") else "warn"
            rows.append(f"<tr class='{css}'>" + "".join(f"<td class='text'>{v}</td>" for v in (
                f"<code>{esc(row['trial_id'])}</code>", esc(block_label(row)), esc(labels.get(group_key(row)) or group_label(row['variant'], row['grid_cell'])),
                esc(_int(row['seed'])), f"<strong>{esc(row['status'])}</strong>", esc(_int(row.get('epochs_run'))), detail)) + "</tr>")
        out.append(_table(["trial", "setting", "variant", "seed", "status", "epochs run", "error (first line)"], rows))
    return "".join(out)


def _int(value) -> str:
    if _nan(value):
        return ""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------- significance

SHOWN_METRICS = ("test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc")
MAX_SIGNIFICANCE_ROWS = 400


def significance_section(significance: pd.DataFrame, summary: pd.DataFrame) -> str:
    out = [
        "<p>Every pair of variants (and grid cells) within a setting, per metric, over finished seeds. "
        "<b>diff</b> = mean(a) − mean(b) (negative: a is lower, i.e. better) with a seeded bootstrap 95% CI; "
        "Welch's t and Mann–Whitney U across seeds; paired t and Wilcoxon over the seeds both finished, only where a and b share "
        "their grid cell; <b>g</b>: Hedges' g. <b>Holm p</b>: Holm–Bonferroni adjustment of each row's primary p "
        "(paired t where defined, else Welch) over the family of "
        f"{int(significance['holm_m'].iloc[0]) if len(significance) else 0} across-seed p-values of this report (every pair × metric, "
        "all rows of significance.csv). <b>Sentence bootstrap</b>: one trained model of each (the first seed both finished), "
        "test sentences (sentiment: segments) resampled jointly 2000 times; the difference is in log-perplexity (nats/token) or RMSE; "
        "it works with one seed but speaks only for those two trained models, not for seed-to-seed variation. "
        "Its p cannot go below 1/2001.</p>"]
    few = summary[summary["n_done"] < 2]
    if len(few):
        names = ", ".join(f"{r['label']} ({block_label(r)}): {int(r['n_done'])} finished seed{'s' if r['n_done'] != 1 else ''}"
                          for _, r in few.iterrows())
        out.append(f"<p class='callout'><b>Too few seeds.</b> Across-seed tests need at least 2 finished seeds on each side; "
                   f"these have fewer, so their across-seed p-values are blank (–) and only the sentence bootstrap applies: {esc(names)}.</p>")
    if (summary["n_done"] >= 2).any() and (summary.loc[summary["n_done"] >= 2, "n_done"] < 6).all():
        out.append("<p class='muted'>With fewer than 6 seeds per side the rank tests are coarse: Mann–Whitney's smallest two-sided p is "
                   "0.1 for 3 vs 3 seeds, Wilcoxon's 0.25 for 3 pairs (noted per row).</p>")
    if significance.empty:
        out.append("<p class='muted'>No pairs to compare (fewer than two variants in every setting).</p>")
        return "".join(out)
    shown = significance[significance["metric"].isin(SHOWN_METRICS)]
    if len(shown) > MAX_SIGNIFICANCE_ROWS:
        out.append(f"<p class='callout'>{len(shown)} comparisons; the first {MAX_SIGNIFICANCE_ROWS} are shown, all are in significance.csv.</p>")
        shown = shown.head(MAX_SIGNIFICANCE_ROWS)
    labels = label_lookup(summary)

    def label(r, side):
        key = group_key({**{k: r[k] for k in BLOCK_KEYS}, "experiment": r[f"experiment_{side}"], "variant": r[side], "grid_cell": r[f"grid_cell_{side}"]})
        return labels.get(key) or group_label(r[side], r[f"grid_cell_{side}"])

    for key, block in shown.groupby(BLOCK_KEYS, dropna=False, sort=False):
        key = dict(zip(BLOCK_KEYS, key))
        rows = []
        for _, r in block.iterrows():
            metric = r["metric"]
            diff = f"{_signed(r['diff'], metric)}" + ("" if _nan(r["diff_ci_low"]) else f" <span class='delta'>[{_signed(r['diff_ci_low'], metric)}, {_signed(r['diff_ci_high'], metric)}]</span>")
            unit = "nats" if "ppl" in metric else ""
            sentence = "–" if _nan(r["sentence_bootstrap_diff"]) else (
                f"{r['sentence_bootstrap_diff']:+.4f} {unit} <span class='delta'>[{r['sentence_bootstrap_ci_low']:+.4f}, {r['sentence_bootstrap_ci_high']:+.4f}]</span>")
            significant = not _nan(r["holm_p"]) and r["holm_p"] < 0.05
            cells = [f"<td class='text'>{esc(label(r, 'a'))}</td>", f"<td class='text'>{esc(label(r, 'b'))}</td>",
                     f"<td class='text'>{esc(METRIC_NAMES.get(metric, metric))}</td>", f"<td>{int(r['n_a'])} / {int(r['n_b'])}</td>",
                     f"<td>{diff}</td>", f"<td>{p_value(r['welch_p'])}</td>", f"<td>{p_value(r['mannwhitney_p'])}</td>",
                     f"<td>{_int(r['paired_n'])}</td>", f"<td>{p_value(r['paired_t_p'])}</td>", f"<td>{p_value(r['wilcoxon_p'])}</td>",
                     f"<td>{'–' if _nan(r['hedges_g']) else format(r['hedges_g'], '+.2f')}</td>",
                     f"<td class='{'sig' if significant else ''}'>{p_value(r['holm_p'])}</td>", f"<td>{sentence}</td>",
                     f"<td>{p_value(r['sentence_bootstrap_p'])}</td>"]
            if r["note"] and not _nan(r["note"]):
                rows.append(f"<tr class='comparison'>{''.join(cells)}</tr><tr class='note-row'><td colspan='{len(cells)}'>{esc(r['note'])}</td></tr>")
            else:
                rows.append(f"<tr class='comparison last'>{''.join(cells)}</tr>")
        out.append(f"<h3>{esc(block_label(key))}</h3>" + _table(
            ["a", "b", "metric", "n a / b", "diff [95% CI]", "Welch p", "Mann–Whitney p", "paired n", "paired t p", "Wilcoxon p",
             "Hedges g", "Holm p", "sentence bootstrap diff [95% CI]", "sentence p"], rows, "significance"))
    return "".join(out)


def _signed(value, metric: str) -> str:
    if _nan(value):
        return "–"
    return f"{value:+.4f}" if "rmse" in metric else f"{value:+.2f}"


# ---------------------------------------------------------------- figures, variants


def figures_section(figures: list[ReportFigure]) -> str:
    out = []
    for figure in figures:
        if figure.svg:
            data = base64.b64encode(figure.svg).decode("ascii")
            out.append(f"<figure id='fig-{esc(figure.name)}'><h3>{esc(figure.title)}</h3>"
                       f"<img class='figure' alt='{esc(figure.title)}' src='data:image/svg+xml;base64,{data}'>"
                       f"<figcaption>{esc(figure.caption)} Saved as <code>figures/{esc(figure.name)}.svg</code>.</figcaption></figure>")
        else:
            out.append(f"<div class='skipped' id='fig-{esc(figure.name)}'><h3>{esc(figure.title)}</h3>"
                       f"<p class='muted'>Not drawn: {esc(figure.skipped)}.</p></div>")
    return "".join(out)


def variants_section(variants: list[str], registry: Optional[dict]) -> str:
    rows = []
    for name in variants:
        variant = (registry or {}).get(name)
        description = getattr(variant, "description", None) if variant else None
        source = getattr(variant, "source", None) if variant else None
        rows.append(f"<tr><td class='text'>{esc(name)}</td><td class='text'>{esc(description) or '<em>not registered in this process</em>'}</td>"
                    f"<td class='text'>{esc(source)}</td></tr>")
    return _table(["variant", "description", "source"], rows)


# ---------------------------------------------------------------- page


def render(results: pd.DataFrame, summary: pd.DataFrame, headline: pd.DataFrame, significance: pd.DataFrame,
           figures: list[ReportFigure], runs: list[dict], registry: Optional[dict] = None, notes: Iterable[str] = ()) -> str:
    """The whole page as a string. results: prepared results.csv rows; summary, headline,
    significance: reports.summary frames; figures: reports.figures.build_figures; runs: the store's
    runs rows; registry: name -> Variant for descriptions (optional); notes: extra callouts."""
    suites = list(dict.fromkeys(results["suite"])) if len(results) else [r.get("suite") for r in runs]
    title = "dropbench report: " + ", ".join(str(s) for s in suites if not _nan(s))
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    callouts = "".join(f"<p class='callout'>{esc(n)}</p>" for n in notes)
    sections = [
        ("environment", "Runs and environment", _environment(runs)),
        ("headline", "Results (Table 1 layout)", headline_tables(headline)),
        ("status", "Trial status", status_section(results, summary)),
        ("significance", "Significance", significance_section(significance, summary)),
        ("figures", "Figures", figures_section(figures)),
        ("variants", "Variants", variants_section(list(dict.fromkeys(results["variant"])), registry)),
    ]
    nav = "".join(f"<a href='#{key}'>{name}</a>" for key, name, _ in sections)
    body = "".join(f"<section id='{key}'><h2>{name}</h2>{content}</section>" for key, name, content in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style><script>{CHECK_SCRIPT}</script></head><body>"
            f"<header><h1>{esc(title)}</h1><p class='muted'>Generated {generated} from results.csv, curves.csv and results.sqlite; "
            "numbers are in summary.csv and significance.csv beside this file, figures in figures/.</p></header>"
            f"<nav>{nav}</nav>{callouts}{body}</body></html>\n")
