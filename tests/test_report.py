"""The report of a fixture results folder: summary.csv and significance.csv against independent
recomputations from results.csv (and results.sqlite for per-sentence losses) with scipy/numpy,
and report.html for completeness, escaping and honesty about what is missing."""

import base64
import html as htmllib
import itertools
import math
import re
import sqlite3

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dropbench.harness.errors import DropbenchError
from dropbench.harness.store import ResultStore
from dropbench.reports import FIGURE_NAMES, write_report
from report_fixture import EVIL, SUITE, build_fixture

GROUP = ["suite", "task", "cell", "hidden_size", "num_layers", "experiment", "variant", "grid_cell"]
METRICS = ["val_ppl", "test_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc", "train_wps", "eval_wps", "mc_eval_wps", "wall_s"]
BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES, SENTENCE_RESAMPLES = 12345, 10_000, 2_000


def read(path):
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = build_fixture(tmp_path_factory.mktemp("report"))
    path = write_report(out)
    return out, path, path.read_text()


def text(value) -> str:
    """'' for missing, '16' for 16 or 16.0, else str: a key compared across CSV files."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer() else str(value)


def rows_of(results, key: dict):
    mask = np.ones(len(results), dtype=bool)
    for column, value in key.items():
        mask &= results[column].map(text).to_numpy() == text(value)
    return results[mask]


def same(actual, expected, rel=1e-9):
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return actual is None or (isinstance(actual, float) and math.isnan(actual))
    return actual == pytest.approx(expected, rel=rel, abs=1e-12)


# ---------------------------------------------------------------- files


def test_writes_every_file(report):
    out, path, _ = report
    assert path == out / "report.html"
    for name in ("report.html", "summary.csv", "significance.csv", "results.csv", "curves.csv"):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURE_NAMES:
        svg = (out / "figures" / f"{name}.svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>"), name
    assert not list(out.glob("**/*.tmp")) and not list(out.glob("**/.*.tmp"))


# ---------------------------------------------------------------- summary.csv


def test_summary_equals_recomputation_from_results_csv(report):
    out, _, _ = report
    results, summary = read(out / "results.csv"), read(out / "summary.csv")
    groups = results.groupby(GROUP, sort=False, dropna=False).ngroups
    assert len(summary) == groups == 11
    for _, row in summary.iterrows():
        trials = rows_of(results, {k: row[k] for k in GROUP})
        done = trials[trials["status"] == "done"]
        assert row["n_trials"] == len(trials) and row["n_seeds"] == row["n_done"] == len(done)
        for status in ("diverged", "failed", "running", "pending"):
            assert row[f"n_{status}"] == (trials["status"] == status).sum()
        for metric in METRICS:
            values = done[metric].dropna().to_numpy(dtype=float)
            assert row[f"{metric}_n"] == len(values)
            assert same(row[f"{metric}_mean"], values.mean() if len(values) else float("nan"))
            if len(values) >= 2:
                sem = stats.sem(values)  # scipy's interval is NaN for zero spread; the CI is then the point
                low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sem) if sem > 0 else (values.mean(),) * 2
                assert same(row[f"{metric}_std"], values.std(ddof=1))
                assert same(row[f"{metric}_ci_low"], low) and same(row[f"{metric}_ci_high"], high)
            else:
                assert math.isnan(row[f"{metric}_std"]) and math.isnan(row[f"{metric}_ci_low"])


def test_diverged_and_failed_trials_are_counted_not_averaged(report):
    out, _, _ = report
    summary = read(out / "summary.csv").set_index(["task", "cell", "variant", "grid_cell"])
    none = summary.loc[("ptb", "lstm", "none", "{}")]
    assert none["n_diverged"] == 1 and none["val_ppl_n"] == 2 and none["val_ppl_mean"] < 1000  # the diverged 1e6 is out
    assert "1 diverged (not averaged)" in none["note"]
    evil = summary.loc[("ptb", "lstm", EVIL, "{}")]
    assert evil["n_failed"] == 1 and evil["test_ppl_n"] == 2
    assert summary.loc[("ptb", "lstm", "moon", "{}")]["note"].startswith("1 seed")
    gru = summary.loc[("sentiment", "gru", "none", "{}")]
    assert gru["n_pending"] == 1 and "missing" in gru["note"]
    for column in ("paper_val_ppl", "paper_test_ppl", "paper_test_ppl_mc", "test_ppl_paper_diff"):
        assert column in summary.columns  # present (NaN) without paper values in results.csv


# ---------------------------------------------------------------- significance.csv


def per_seed(trials, metric):
    done = trials[(trials["status"] == "done") & trials[metric].notna()]
    return dict(zip(done["seed"].astype(int), done[metric].astype(float)))


def holm_reference(p):
    """Holm by the textbook loop (independent of reports.statistics.holm)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = [i for i in range(len(p)) if not math.isnan(p[i])]
    ranked = sorted(valid, key=lambda i: p[i])
    running = 0.0
    for rank, i in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p[i]))
        out[i] = running
    return out


def sentence_losses(db, trial_id, kind):
    rows = db.execute("SELECT idx, loss, count FROM sample_losses WHERE trial_id = ? AND kind = ? ORDER BY idx", (trial_id, kind)).fetchall()
    return np.array([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=float)


def test_significance_has_one_row_per_pair_and_applicable_metric(report):
    out, _, _ = report
    results, significance = read(out / "results.csv"), read(out / "significance.csv")
    expected = set()
    for block, rows in results.groupby(["suite", "task", "cell", "hidden_size", "num_layers"], sort=False):
        groups = list(dict.fromkeys(zip(rows["experiment"].map(text), rows["variant"], rows["grid_cell"])))
        for a, b in itertools.combinations(groups, 2):
            for metric in ("test_ppl", "val_ppl", "test_ppl_mc", "test_rmse", "test_rmse_mc"):
                has = [rows_of(rows, {"experiment": e, "variant": v, "grid_cell": g})[metric].notna().any() for e, v, g in (a, b)]
                if all(has):
                    expected.add((block[1], block[2], a, b, metric))
    found = {(r.task, r.cell, (text(r.experiment_a), r.a, r.grid_cell_a), (text(r.experiment_b), r.b, r.grid_cell_b), r.metric)
             for r in significance.itertuples()}
    assert found == expected and len(significance) == 29


def test_significance_equals_recomputation(report):
    out, _, _ = report
    results, significance = read(out / "results.csv"), read(out / "significance.csv")
    db = sqlite3.connect(out / "results.sqlite")
    checked_paired = checked_sentence = 0
    for _, row in significance.iterrows():
        block = {k: row[k] for k in ("suite", "task", "cell", "hidden_size", "num_layers")}
        trials_a = rows_of(results, {**block, "experiment": row["experiment_a"], "variant": row["a"], "grid_cell": row["grid_cell_a"]})
        trials_b = rows_of(results, {**block, "experiment": row["experiment_b"], "variant": row["b"], "grid_cell": row["grid_cell_b"]})
        a_by_seed, b_by_seed = per_seed(trials_a, row["metric"]), per_seed(trials_b, row["metric"])
        a, b = np.array(list(a_by_seed.values())), np.array(list(b_by_seed.values()))
        assert (row["n_a"], row["n_b"]) == (len(a), len(b))
        assert same(row["mean_a"], a.mean()) and same(row["diff"], a.mean() - b.mean())
        if min(len(a), len(b)) >= 2:
            assert same(row["welch_p"], stats.ttest_ind(a, b, equal_var=False).pvalue)
            assert same(row["mannwhitney_p"], stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
            pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
            assert same(row["hedges_g"], (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (len(a) + len(b)) - 9)))
            rng = np.random.default_rng(BOOTSTRAP_SEED)
            ia, ib = rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a))), rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))
            d = a[ia].mean(1) - b[ib].mean(1)
            assert same(row["diff_ci_low"], np.quantile(d, 0.025)) and same(row["diff_ci_high"], np.quantile(d, 0.975))
        else:
            assert math.isnan(row["welch_p"]) and math.isnan(row["hedges_g"]) and math.isnan(row["diff_ci_low"])
            assert "1 seed: across-seed tests need ≥ 2" in row["note"]
        shared = sorted(set(a_by_seed) & set(b_by_seed)) if row["grid_cell_a"] == row["grid_cell_b"] else []
        assert row["paired_n"] == len(shared)
        if len(shared) >= 2:
            pa, pb = [a_by_seed[s] for s in shared], [b_by_seed[s] for s in shared]
            assert same(row["paired_t_p"], stats.ttest_rel(pa, pb).pvalue) and same(row["wilcoxon_p"], stats.wilcoxon(pa, pb).pvalue)
            assert row["primary_test"] == "paired t" and same(row["primary_p"], row["paired_t_p"])
            checked_paired += 1
        else:
            assert math.isnan(row["paired_t_p"])
            assert same(row["primary_p"], row["welch_p"])
        if row["metric"] != "val_ppl" and len(a) and len(b):
            seed = min(set(a_by_seed) & set(b_by_seed))
            kind = "mc" if row["metric"].endswith("_mc") else "det"
            id_a = trials_a[(trials_a["seed"] == seed) & (trials_a["status"] == "done")]["trial_id"].iloc[0]
            id_b = trials_b[(trials_b["seed"] == seed) & (trials_b["status"] == "done")]["trial_id"].iloc[0]
            (la, ca), (lb, cb) = sentence_losses(db, id_a, kind), sentence_losses(db, id_b, kind)
            finish = np.sqrt if row["task"] == "sentiment" else (lambda x: x)
            diff = finish(la.sum() / ca.sum()) - finish(lb.sum() / cb.sum())
            # the point estimate reproduces the trials' own metrics
            own = (lambda x: np.log(x)) if row["task"] == "ptb" else (lambda x: x)
            metric_a = trials_a[trials_a["trial_id"] == id_a][row["metric"]].iloc[0]
            metric_b = trials_b[trials_b["trial_id"] == id_b][row["metric"]].iloc[0]
            assert diff == pytest.approx(own(metric_a) - own(metric_b))
            s = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(la), (SENTENCE_RESAMPLES, len(la)))
            d = finish(la[s].sum(1) / ca[s].sum(1)) - finish(lb[s].sum(1) / cb[s].sum(1))
            assert row["sentence_bootstrap_seed"] == seed and row["sentence_bootstrap_n"] == len(la)
            assert same(row["sentence_bootstrap_diff"], diff)
            assert same(row["sentence_bootstrap_ci_low"], np.quantile(d, 0.025)) and same(row["sentence_bootstrap_ci_high"], np.quantile(d, 0.975))
            assert same(row["sentence_bootstrap_p"], (1 + np.sum(np.abs(d - diff) >= abs(diff))) / (1 + SENTENCE_RESAMPLES))
            checked_sentence += 1
        else:
            assert math.isnan(row["sentence_bootstrap_p"])
    assert checked_paired >= 3 and checked_sentence >= 20
    np.testing.assert_allclose(significance["holm_p"], holm_reference(significance["primary_p"]), rtol=1e-12)
    np.testing.assert_allclose(significance["sentence_bootstrap_holm_p"], holm_reference(significance["sentence_bootstrap_p"]), rtol=1e-12)
    assert (significance["holm_m"] == significance["primary_p"].notna().sum()).all()


def test_report_is_reproducible(report):
    out, _, _ = report
    before = {name: (out / name).read_bytes() for name in ("summary.csv", "significance.csv", *(f"figures/{f}.svg" for f in FIGURE_NAMES))}
    write_report(out)
    for name, content in before.items():
        assert (out / name).read_bytes() == content, name


# ---------------------------------------------------------------- report.html


def test_html_shows_every_variant_and_figure(report):
    out, _, page = report
    results = read(out / "results.csv")
    headline = page[page.index("<section id='headline'>"):page.index("<section id='status'>")]
    for variant in results["variant"].unique():
        assert f"<td class='text'>{htmllib.escape(variant)}</td>" in headline, variant
    images = re.findall(r"<img class='figure' alt='([^']*)' src='data:image/svg\+xml;base64,([^']+)'>", page)
    assert len(images) == len(FIGURE_NAMES)
    for alt, data in images:
        assert b"<svg" in base64.b64decode(data), alt
    for name in FIGURE_NAMES:
        assert f"id='fig-{name}'" in page
    assert "Not drawn" not in page
    for section in ("environment", "headline", "status", "significance", "figures", "variants"):
        assert f"<section id='{section}'>" in page


def test_html_escapes_every_string_from_data(report):
    _, _, page = report
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SUITE not in page and "fixture-&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<i>fixture cpu</i>" not in page and "&lt;i&gt;fixture cpu&lt;/i&gt;" in page
    assert "mask <shape>" not in page and "mask &lt;shape&gt; mismatch &amp; more" in page
    assert len(re.findall(r"<script", page)) == 1  # the report's own check script only


def test_html_is_self_contained(report):
    _, _, page = report
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page


def test_html_states_status_and_missing_trials(report):
    _, _, page = report
    status = page[page.index("<section id='status'>"):page.index("<section id='significance'>")]
    assert "26 trials: 22 done, 1 diverged, 1 failed, 1 running, 1 pending." in status
    assert "Partial results: 2 trials not finished" in status
    # the failed trial shows its exception line, not 'Traceback ...'
    assert "RuntimeError: mask &lt;shape&gt; mismatch &amp; more" in status
    for word in ("diverged", "failed", "running", "pending"):
        assert f"<strong>{word}</strong>" in status
    significance = page[page.index("<section id='significance'>"):page.index("<section id='figures'>")]
    assert "Too few seeds" in significance and "moon" in significance


def test_headline_table_marks_the_best_and_has_mc_rows(report):
    _, _, page = report
    headline = page[page.index("<section id='headline'>"):page.index("<section id='status'>")]
    ptb = headline[:headline.index("sentiment")]
    assert "variational-tied (MC)" in ptb and ptb.count("class='best'") >= 4
    # the lowest mean test perplexity of the fixture's PTB rows is the best-marked one
    best = re.findall(r"<td class='best'>([0-9.]+) ±", ptb)
    assert best and min(float(b) for b in best) < 100


# ---------------------------------------------------------------- partial, empty, one seed, paper values


def test_one_seed_partial_folder_renders_and_says_so(tmp_path):
    out = build_fixture(tmp_path / "one", sentiment=False, seeds=1)
    store = ResultStore(out / "results.sqlite")
    config = {"task": "ptb", "variant": "zaremba", "seed": 1, "cell": "lstm", "hidden_size": 16, "num_layers": 2, "device": "cpu", "mc_samples": 0}
    store.register_trial("pendingtrial0001", 99, "fixture", config, {})
    store.close()
    page = write_report(out).read_text()
    significance = read(out / "significance.csv")
    assert significance["welch_p"].isna().all() and significance["holm_p"].isna().all()
    assert significance["note"].str.contains("1 seed: across-seed tests need ≥ 2").all()
    assert significance.loc[significance["metric"] == "test_ppl", "sentence_bootstrap_p"].notna().all()
    assert "pendingtrial0001" in page and "Partial results: 1 trial not finished" in page
    assert "Not drawn: no finished sentiment trial" in page and "Not drawn: no variant ran a grid" in page
    assert page.count("<img class='figure'") == 3  # PTB curves, wps, sentence-bootstrap significance
    summary = read(out / "summary.csv")
    zaremba = summary[summary["variant"] == "zaremba"].iloc[0]
    assert zaremba["n_done"] == 0 and zaremba["n_pending"] == 1 and "no finished trials" in zaremba["note"]


def test_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(DropbenchError, match="no results"):
        write_report(tmp_path)
    with pytest.raises(DropbenchError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_store_without_trials_renders(tmp_path):
    ResultStore(tmp_path / "results.sqlite").close()
    page = write_report(tmp_path).read_text()
    assert "No trials in this folder yet" in page and page.count("Not drawn") == len(FIGURE_NAMES)


def test_paper_values_and_selected_cells(report):
    from dropbench.reports import html, summary

    out, _, _ = report
    results = read(out / "results.csv")
    results["paper_test_ppl"] = np.where(results["variant"] == "variational-tied", 79.7, np.nan)
    results["paper_test_ppl_mc"] = np.where(results["variant"] == "variational-tied", 79.0, np.nan)
    # per seed a different grid cell of the sentiment LSTM variant is marked selected
    grid = (results["task"] == "sentiment") & (results["cell"] == "lstm") & (results["variant"] == "variational-tied")
    picks = {1: '{"p_embedding": 0.5, "p_recurrent": 0.0}', 2: '{"p_embedding": 0.0, "p_recurrent": 0.0}'}
    # as export.py marks them: every trial, except the grid cells not picked in a selection experiment
    results["selected"] = ~grid | (results["grid_cell"] == results["seed"].map(picks))
    frame = summary.summary_frame(summary.with_selection(results))
    vt = frame[(frame["task"] == "ptb") & (frame["variant"] == "variational-tied")].iloc[0]
    assert vt["paper_test_ppl"] == 79.7 and vt["test_ppl_paper_diff"] == pytest.approx(vt["test_ppl_mean"] - 79.7)
    assert vt["test_ppl_mc_paper_diff"] == pytest.approx(vt["test_ppl_mc_mean"] - 79.0)
    chosen = frame[frame["grid_cell"] == summary.SELECTED_CELL]
    assert len(chosen) == 1 and chosen.iloc[0]["n_done"] == 2
    assert chosen.iloc[0]["test_rmse_mean"] == pytest.approx(results[grid & results["selected"]]["test_rmse"].mean())
    headline = summary.headline(frame)
    lstm = headline[(headline["task"] == "sentiment") & (headline["cell"] == "lstm")]
    assert list(lstm["grid_cell"]) == ["{}", summary.SELECTED_CELL]
    significance = summary.significance_frame(summary.with_selection(results))
    compared = significance[(significance["task"] == "sentiment") & (significance["cell"] == "lstm")]
    # the selected group stands in for the variant's individual cells
    assert set(zip(compared["a"], compared["grid_cell_a"], compared["b"], compared["grid_cell_b"])) == {
        ("none", "{}", "variational-tied", summary.SELECTED_CELL)}
    page = html.render(summary.prepare(results), frame, headline, significance, [], [])
    ptb = page[page.index("<section id='headline'>"):page.index("sentiment · LSTM")]
    assert "<th>paper</th>" in ptb and "79.7" in ptb and "79.0" in ptb and f"({vt['test_ppl_mean'] - 79.7:+.1f})" in ptb
    assert "variational-tied [selected cell per seed]" in page


def test_same_variant_in_two_experiments_is_kept_apart_and_labelled():
    from dropbench.reports import summary

    base = {"suite": "s", "task": "ptb", "cell": "lstm", "hidden_size": 16, "num_layers": 2, "variant": "zaremba",
            "grid_cell": "{}", "status": "done", "mc_samples": 0}
    results = pd.DataFrame([{**base, "experiment": experiment, "seed": seed, "trial_id": f"{experiment}{seed}", "test_ppl": value}
                            for experiment, values in (("small-lr", (100.0, 102.0)), ("large-lr", (90.0, 91.0)))
                            for seed, value in zip((1, 2), values)])
    frame = summary.summary_frame(results)
    assert list(frame["test_ppl_mean"]) == [101.0, 90.5]
    assert list(frame["label"]) == ["zaremba (small-lr)", "zaremba (large-lr)"]
    significance = summary.significance_frame(results)
    assert list(significance["experiment_a"].unique()) == ["small-lr"] and significance.iloc[0]["paired_n"] == 2
