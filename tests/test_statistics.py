"""reports.statistics against scipy / numpy recomputations and hand-worked values."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats

from dropbench.reports import statistics as st

A = np.array([82.1, 83.4, 81.7, 82.9])
B = np.array([79.9, 80.4, 80.1])


def test_describe_is_mean_sample_std_and_t_interval():
    d = st.describe(A)
    low, high = stats.t.interval(0.95, len(A) - 1, loc=A.mean(), scale=stats.sem(A))
    assert d.n == 4 and d.mean == pytest.approx(A.mean()) and d.std == pytest.approx(np.std(A, ddof=1))
    assert (d.ci_low, d.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_describe_drops_nan_and_gives_nan_spread_for_one_value():
    assert st.describe([np.nan, 5.0]).n == 1
    one = st.describe([5.0])
    assert one.mean == 5.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert st.describe([]).n == 0 and math.isnan(st.describe([]).mean)


def test_across_seed_tests_match_scipy():
    assert st.welch(A, B).p == pytest.approx(stats.ttest_ind(A, B, equal_var=False).pvalue)
    assert st.mann_whitney(A, B).p == pytest.approx(stats.mannwhitneyu(A, B, alternative="two-sided").pvalue)
    paired = A[:3]
    assert st.paired_t(paired, B).p == pytest.approx(stats.ttest_rel(paired, B).pvalue)
    assert st.wilcoxon(paired, B).p == pytest.approx(stats.wilcoxon(paired, B).pvalue)


def test_tests_with_one_seed_give_nan_and_say_why():
    for test in (st.welch, st.mann_whitney):
        result = test([80.0], B)
        assert math.isnan(result.p) and result.note == "1 seed: across-seed tests need ≥ 2"
    assert math.isnan(st.paired_t([1.0], [2.0]).p) and "paired tests need ≥ 2" in st.paired_t([1.0], [2.0]).note
    assert math.isnan(st.hedges_g([1.0], B))
    interval = st.bootstrap_diff_ci([80.0], B)
    assert interval.estimate == pytest.approx(80.0 - B.mean()) and math.isnan(interval.low) and "1 seed" in interval.note


def test_degenerate_inputs_do_not_raise():
    same = np.array([1.0, 1.0, 1.0])
    assert math.isnan(st.welch(same, same).p) and st.welch(same, same).note
    assert math.isnan(st.wilcoxon(same, same).p) and "zero" in st.wilcoxon(same, same).note
    assert math.isnan(st.hedges_g(same, same))
    with pytest.raises(ValueError):
        st.paired_t([1.0, 2.0], [1.0])


def test_rank_tests_state_their_smallest_attainable_p():
    assert "smallest p 0.1" in st.mann_whitney([1, 2, 3], [4, 5, 6]).note
    assert st.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]).note == ""
    assert "smallest p 0.25" in st.wilcoxon([1, 2, 3], [2, 4, 6]).note


def test_hedges_g_against_the_formula():
    na, nb = len(A), len(B)
    pooled = math.sqrt(((na - 1) * A.var(ddof=1) + (nb - 1) * B.var(ddof=1)) / (na + nb - 2))
    expected = (A.mean() - B.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9))
    assert st.hedges_g(A, B) == pytest.approx(expected)
    assert st.hedges_g(B, A) == pytest.approx(-expected)


def test_bootstrap_ci_is_the_documented_algorithm_and_agrees_with_scipy():
    interval = st.bootstrap_diff_ci(A, B, resamples=4000, seed=7)
    rng = np.random.default_rng(7)
    ia, ib = rng.integers(0, len(A), (4000, len(A))), rng.integers(0, len(B), (4000, len(B)))
    d = A[ia].mean(1) - B[ib].mean(1)
    assert (interval.low, interval.high) == (pytest.approx(np.quantile(d, 0.025)), pytest.approx(np.quantile(d, 0.975)))
    reference = stats.bootstrap((A, B), lambda x, y, axis: x.mean(axis) - y.mean(axis), method="percentile",
                                n_resamples=20000, random_state=np.random.default_rng(1)).confidence_interval
    assert interval.low == pytest.approx(reference.low, abs=0.15) and interval.high == pytest.approx(reference.high, abs=0.15)
    assert st.bootstrap_diff_ci(A, B) == st.bootstrap_diff_ci(A, B)  # seeded: reproducible


def test_holm_on_a_worked_example():
    adjusted = st.holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, max(2*0.03, .), max(1*0.04, 0.06)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    assert np.isnan(st.holm([np.nan])).all() and st.holm([]).size == 0


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.floats(0, 1), min_size=1, max_size=12))
def test_holm_properties(p):
    p = np.array(p)
    adjusted = st.holm(p)
    assert (adjusted >= p - 1e-12).all() and (adjusted <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adjusted[order]) >= -1e-12).all()  # monotone in the raw p
    assert adjusted.min() == pytest.approx(min(1.0, len(p) * p.min()))  # smallest is Bonferroni


def _sentences(rng, n, level):
    counts = rng.integers(5, 30, n)
    return np.arange(n), counts * (math.log(level) + rng.normal(0, 0.2, n)), counts


def test_sentence_bootstrap_documented_algorithm():
    rng = np.random.default_rng(3)
    idx, loss_a, counts = _sentences(rng, 80, 100.0)
    loss_b = counts * (math.log(104.0) + rng.normal(0, 0.2, 80))
    result = st.sentence_bootstrap((idx, loss_a, counts), (idx, loss_b, counts), resamples=1000, seed=11)
    diff = loss_a.sum() / counts.sum() - loss_b.sum() / counts.sum()
    s = np.random.default_rng(11).integers(0, 80, (1000, 80))
    d = loss_a[s].sum(1) / counts[s].sum(1) - loss_b[s].sum(1) / counts[s].sum(1)
    assert result.diff == pytest.approx(diff) and result.n == 80
    assert (result.low, result.high) == (pytest.approx(np.quantile(d, 0.025)), pytest.approx(np.quantile(d, 0.975)))
    assert result.p == pytest.approx((1 + np.sum(np.abs(d - diff) >= abs(diff))) / 1001)


def test_sentence_bootstrap_detects_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(4)
    idx, loss, counts = _sentences(rng, 300, 100.0)
    better = (idx, loss - counts * 0.1, counts)  # 0.1 nats/token better on every sentence
    clear = st.sentence_bootstrap(better, (idx, loss, counts))
    assert clear.diff == pytest.approx(-0.1) and clear.high < 0 and clear.p < 0.01
    same = st.sentence_bootstrap((idx, loss, counts), (idx, loss, counts))
    assert same.diff == 0 and same.p == 1.0


def test_sentence_bootstrap_aligns_on_idx_and_checks_the_test_set():
    rng = np.random.default_rng(5)
    idx, loss, counts = _sentences(rng, 50, 100.0)
    shuffled = rng.permutation(50)
    a = (idx[shuffled], loss[shuffled], counts[shuffled])
    b = (idx[:40], loss[:40] + 1.0, counts[:40])
    result = st.sentence_bootstrap(a, b)
    assert result.n == 40
    assert result.diff == pytest.approx(loss[:40].sum() / counts[:40].sum() - (loss[:40] + 1).sum() / counts[:40].sum())
    other_counts = st.sentence_bootstrap((idx, loss, counts), (idx, loss, counts + 1))
    assert math.isnan(other_counts.p) and "different test sets" in other_counts.note
    assert math.isnan(st.sentence_bootstrap((idx[:1], loss[:1], counts[:1]), (idx[:1], loss[:1], counts[:1])).p)


def test_sentence_bootstrap_sqrt_is_an_rmse_difference():
    rng = np.random.default_rng(6)
    squared_a, squared_b = rng.uniform(0, 0.05, 60), rng.uniform(0, 0.06, 60)
    ones = np.ones(60)
    result = st.sentence_bootstrap((np.arange(60), squared_a, ones), (np.arange(60), squared_b, ones), transform="sqrt")
    assert result.diff == pytest.approx(math.sqrt(squared_a.mean()) - math.sqrt(squared_b.mean()))
    assert result.low <= result.diff <= result.high
