"""Statistics for comparing dropout variants: small pure functions over numpy arrays.

Across seeds (one number per trained model, e.g. the test perplexity of each seed):

    describe(x)                   n, mean, std (ddof=1), t-based 95% CI of the mean
    welch(a, b)                   Welch's t-test (unequal variances), scipy.stats.ttest_ind
    mann_whitney(a, b)            Mann-Whitney U, two-sided, scipy.stats.mannwhitneyu
    paired_t(a, b)                paired t-test over shared seeds, scipy.stats.ttest_rel
    wilcoxon(a, b)                Wilcoxon signed-rank over shared seeds, scipy.stats.wilcoxon
    bootstrap_diff_ci(a, b)       seeded percentile bootstrap CI of mean(a) - mean(b)
    hedges_g(a, b)                bias-corrected standardised mean difference
    holm(p)                       Holm-Bonferroni adjusted p-values of a family

Within one pair of trained models (works with a single seed):

    sentence_bootstrap(...)       paired bootstrap over test sentences (or segments) of the
                                  difference in log-perplexity (or RMSE) of two models

Every test returns NaN together with a note, never raises, where it is undefined (fewer than two
values, zero variance, all differences zero); the note says why, in words fit for a report. NaN
entries of the inputs are dropped first. Bootstrap resampling uses a fixed seed, so a report is
reproducible number for number.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 12345
BOOTSTRAP_RESAMPLES = 10_000
SENTENCE_RESAMPLES = 2_000
_CHUNK = 250  # resamples drawn at a time: bounds memory for test sets of thousands of sentences


class Description(NamedTuple):
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


class TestResult(NamedTuple):
    statistic: float
    p: float
    note: str = ""


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float
    note: str = ""


class PairedBootstrap(NamedTuple):
    diff: float
    low: float
    high: float
    p: float
    n: int
    note: str = ""


NAN = float("nan")


def _clean(x) -> np.ndarray:
    """1-D float array with NaN (missing values) removed."""
    x = np.asarray(x, dtype=float).ravel()
    return x[~np.isnan(x)]


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def describe(x, confidence: float = CONFIDENCE) -> Description:
    """x: (n,) one value per seed. Returns n, mean, sample std (ddof=1) and the two-sided
    `confidence` interval of the mean, mean ± t_{(1+c)/2, n-1} · std / sqrt(n).
    n = 0 gives all NaN; n = 1 gives the mean and NaN for std and CI."""
    x = _clean(x)
    n = x.size
    if n == 0:
        return Description(0, NAN, NAN, NAN, NAN)
    mean = float(x.mean())
    if n == 1:
        return Description(1, mean, NAN, NAN, NAN)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Description(n, mean, std, mean - half, mean + half)


def _too_few(na: int, nb: int, need: int = 2, what: str = "across-seed tests") -> str:
    smallest = min(na, nb)
    return f"{_seeds(smallest)}: {what} need ≥ {need}" if smallest < need else ""


def _quiet(function, *args, **kwargs):
    """Call a scipy test with its warnings (small samples, zero variance) silenced: the caller
    turns a NaN result into a note instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)


def welch(a, b) -> TestResult:
    """a: (n_a,), b: (n_b,) values per seed of two variants. Welch's two-sided t-test
    (scipy.stats.ttest_ind, equal_var=False). Needs n ≥ 2 on each side."""
    a, b = _clean(a), _clean(b)
    if note := _too_few(a.size, b.size):
        return TestResult(NAN, NAN, note)
    result = _quiet(stats.ttest_ind, a, b, equal_var=False)
    statistic, p = float(result.statistic), float(result.pvalue)
    if math.isnan(p):
        return TestResult(statistic, NAN, "zero variance on both sides: Welch's t undefined")
    return TestResult(statistic, p)


def mann_whitney(a, b) -> TestResult:
    """a: (n_a,), b: (n_b,). Two-sided Mann-Whitney U (scipy.stats.mannwhitneyu, exact for small
    samples without ties). Needs n ≥ 2 on each side. Its smallest attainable p-value is
    2 / C(n_a + n_b, n_a) (0.1 for 3 vs 3 seeds); the note says so when that is above 0.05."""
    a, b = _clean(a), _clean(b)
    if note := _too_few(a.size, b.size):
        return TestResult(NAN, NAN, note)
    result = _quiet(stats.mannwhitneyu, a, b, alternative="two-sided")
    floor = min(1.0, 2 / math.comb(a.size + b.size, a.size))
    note = f"Mann-Whitney cannot reach p < 0.05 with {a.size} vs {b.size} seeds (smallest p {floor:.2g})" if floor > 0.05 else ""
    return TestResult(float(result.statistic), float(result.pvalue), note)


def paired_t(a, b) -> TestResult:
    """a: (n,), b: (n,) values of two variants on the same n seeds (a[i] and b[i] share seed i).
    Two-sided paired t-test (scipy.stats.ttest_rel). Pairs with a NaN on either side are dropped.
    Needs n ≥ 2 pairs."""
    a, b = _pairs(a, b)
    if a.size < 2:
        return TestResult(NAN, NAN, f"{a.size} shared seed{'' if a.size == 1 else 's'}: paired tests need ≥ 2")
    result = _quiet(stats.ttest_rel, a, b)
    statistic, p = float(result.statistic), float(result.pvalue)
    if math.isnan(p):
        return TestResult(statistic, NAN, "identical or constant differences: paired t undefined")
    return TestResult(statistic, p)


def wilcoxon(a, b) -> TestResult:
    """a: (n,), b: (n,) paired as in `paired_t`. Two-sided Wilcoxon signed-rank test
    (scipy.stats.wilcoxon, exact for small n). Needs n ≥ 2 pairs and a non-zero difference.
    Its smallest attainable p-value is 2 / 2^n (0.25 for 3 seeds); the note says so when above 0.05."""
    a, b = _pairs(a, b)
    if a.size < 2:
        return TestResult(NAN, NAN, f"{a.size} shared seed{'' if a.size == 1 else 's'}: paired tests need ≥ 2")
    if np.all(a == b):
        return TestResult(NAN, NAN, "all paired differences are zero: Wilcoxon undefined")
    try:
        result = _quiet(stats.wilcoxon, a, b, alternative="two-sided")
    except ValueError as exc:
        return TestResult(NAN, NAN, f"Wilcoxon undefined: {exc}")
    floor = min(1.0, 2 / 2 ** a.size)
    note = f"Wilcoxon cannot reach p < 0.05 with {a.size} paired seeds (smallest p {floor:.2g})" if floor > 0.05 else ""
    return TestResult(float(result.statistic), float(result.pvalue), note)


def _pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def bootstrap_diff_ci(a, b, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Interval:
    """a: (n_a,), b: (n_b,). Percentile bootstrap CI of mean(a) - mean(b), resampling each side
    independently with replacement. Algorithm (fixed, so a test can redo it):

        rng = np.random.default_rng(seed)
        ia = rng.integers(0, n_a, (resamples, n_a)); ib = rng.integers(0, n_b, (resamples, n_b))
        d = a[ia].mean(1) - b[ib].mean(1)
        low, high = np.quantile(d, [(1 - c) / 2, (1 + c) / 2])

    Returns the observed difference and the interval. Needs n ≥ 2 on each side (with one value a
    side the bootstrap distribution is a single point, which is no interval)."""
    a, b = _clean(a), _clean(b)
    estimate = float(a.mean() - b.mean()) if a.size and b.size else NAN
    if note := _too_few(a.size, b.size, what="bootstrap CIs across seeds"):
        return Interval(estimate, NAN, NAN, note)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, (resamples, a.size))
    ib = rng.integers(0, b.size, (resamples, b.size))
    d = a[ia].mean(axis=1) - b[ib].mean(axis=1)
    low, high = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(estimate, float(low), float(high))


def hedges_g(a, b) -> float:
    """a: (n_a,), b: (n_b,). Hedges' g = J · (mean(a) - mean(b)) / s_pooled, with
    s_pooled² = ((n_a-1) s_a² + (n_b-1) s_b²) / (n_a + n_b - 2) (ddof=1 variances) and the
    small-sample correction J = 1 - 3 / (4 (n_a + n_b) - 9). NaN where either side has fewer than
    2 values (J is 0 at n_a + n_b = 3, and one value has no spread) or the pooled standard deviation
    is zero."""
    a, b = _clean(a), _clean(b)
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return NAN
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    if pooled <= 0:
        return NAN
    return float((1 - 3 / (4 * (na + nb) - 9)) * (a.mean() - b.mean()) / math.sqrt(pooled))


def holm(p) -> np.ndarray:
    """p: (m,) raw p-values of one family; NaN entries are not part of the family. Returns (m,)
    Holm-Bonferroni adjusted p-values in the input order (NaN where the input is NaN):
    with the k non-NaN p sorted ascending, adj_(i) = max_{j ≤ i} min(1, (k - j + 1) p_(j))."""
    p = np.asarray(p, dtype=float).ravel()
    adjusted = np.full(p.shape, NAN)
    valid = np.flatnonzero(~np.isnan(p))
    k = valid.size
    if k == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _aligned(a: tuple, b: tuple):
    """(idx, loss, count) triples of two trials -> losses and counts of the shared idx, in idx order."""
    idx_a, loss_a, count_a = (np.asarray(v) for v in a)
    idx_b, loss_b, count_b = (np.asarray(v) for v in b)
    shared, ia, ib = np.intersect1d(idx_a, idx_b, assume_unique=True, return_indices=True)
    return shared, loss_a[ia].astype(float), count_a[ia].astype(float), loss_b[ib].astype(float), count_b[ib].astype(float)


def sentence_bootstrap(a: tuple, b: tuple, transform: str = "log", resamples: int = SENTENCE_RESAMPLES,
                       confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> PairedBootstrap:
    """Paired bootstrap over test sentences (or sentiment segments) of two trained models.

    a, b: (idx (N,), loss (N,), count (N,)) per test sentence of each model: the summed NLL of the
    sentence and its token count (PTB), or the squared error of a segment and 1 (sentiment). They are
    aligned on idx; sentences one model lacks are dropped, and for PTB (transform 'log') the token
    counts of a shared sentence must agree, else the two were scored on different test sets.

    The statistic of a set of sentences S is L(S) = sum(loss[S]) / sum(count[S]): the log-perplexity
    in nats per token (transform 'log'), or, with transform 'sqrt', sqrt of it: the RMSE. Returned:

        diff   L_a(all) - L_b(all) (negative: a is better)
        low, high   percentile CI of the difference over `resamples` resamplings of the N shared
               sentences with replacement, the same resampled sentences for both models:
                   rng = np.random.default_rng(seed); s = rng.integers(0, N, (resamples, N))
        p      two-sided p of "no difference": (1 + #{|d*_r - diff| ≥ |diff|}) / (1 + resamples),
               the bootstrap distribution shifted to the null (centred on zero)
        n      number of shared sentences

    Needs N ≥ 2. It measures how sure we are that one *trained model* beats another on this test
    set; it says nothing about seed-to-seed variation of training."""
    if transform not in ("log", "sqrt"):
        raise ValueError(f"transform must be 'log' or 'sqrt', got {transform!r}")
    shared, loss_a, count_a, loss_b, count_b = _aligned(a, b)
    n = shared.size
    if n < 2:
        return PairedBootstrap(NAN, NAN, NAN, NAN, n, f"{n} shared test sentence{'' if n == 1 else 's'}: the sentence bootstrap needs ≥ 2")
    if transform == "log" and not np.array_equal(count_a, count_b):
        return PairedBootstrap(NAN, NAN, NAN, NAN, n, "token counts per sentence differ: the two trials were scored on different test sets")
    finish = np.sqrt if transform == "sqrt" else (lambda x: x)
    diff = float(finish(loss_a.sum() / count_a.sum()) - finish(loss_b.sum() / count_b.sum()))
    rng = np.random.default_rng(seed)
    same_counts = np.array_equal(count_a, count_b)
    d = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):  # chunked draws equal one (resamples, n) draw
        s = rng.integers(0, n, (min(_CHUNK, resamples - start), n))
        total_a = count_a[s].sum(1)
        total_b = total_a if same_counts else count_b[s].sum(1)
        with np.errstate(all="ignore"):
            d[start:start + len(s)] = finish(loss_a[s].sum(1) / total_a) - finish(loss_b[s].sum(1) / total_b)
    low, high = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    p = (1 + np.count_nonzero(np.abs(d - diff) >= abs(diff))) / (1 + resamples)
    return PairedBootstrap(diff, float(low), float(high), float(min(1.0, p)), n)
