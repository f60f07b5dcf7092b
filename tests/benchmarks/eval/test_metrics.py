"""benchmarks/eval: metrics and the paired bootstrap against independent references (SciPy, plain Python)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.eval import metrics
from benchmarks.eval.metrics import bootstrap_indices, paired_bootstrap

# --- independent references: plain Python counting, SciPy ------------------------------------------------


def reference_accuracy(labels, predicted) -> float:
    return sum(int(a == b) for a, b in zip(labels, predicted)) / len(labels)


def reference_f1(labels, predicted) -> float:
    tp = sum(1 for a, b in zip(labels, predicted) if a == 1 and b == 1)
    fp = sum(1 for a, b in zip(labels, predicted) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(labels, predicted) if a == 1 and b == 0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def reference(metric: str, targets, predicted) -> float:
    if metric == "accuracy":
        return reference_accuracy(targets, predicted)
    if metric == "f1":
        return reference_f1(targets, predicted)
    if metric == "pearson":
        return float(stats.pearsonr(targets, predicted).statistic)
    if metric == "spearman":
        return float(stats.spearmanr(targets, predicted).statistic)
    if metric == "rmse":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(targets, predicted)) / len(targets))
    raise AssertionError(metric)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_counting(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    predicted = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    assert metrics.accuracy(labels, predicted) == pytest.approx(
        reference_accuracy(labels, predicted), abs=1e-12
    )
    assert metrics.f1(labels, predicted) == pytest.approx(reference_f1(labels, predicted), abs=1e-12)


def test_f1_without_positives_is_zero_not_nan():
    assert metrics.f1(np.zeros(5, int), np.zeros(5, int)) == 0.0
    assert metrics.f1(np.array([1, 0, 1]), np.array([0, 0, 0])) == 0.0
    assert metrics.f1(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(-4, 5, size=300).astype(float) / 2  # many ties, as VADER's mean ratings have
    predicted = np.round(targets + rng.normal(0, 1.5, size=300), 1)
    for name in ("pearson", "spearman", "rmse"):
        assert metrics.METRICS[name](targets, predicted) == pytest.approx(
            reference(name, targets, predicted), abs=1e-10
        )


def test_rankdata_matches_scipy_average_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 10, size=(4, 50))
    np.testing.assert_allclose(metrics.rankdata(x), stats.rankdata(x, axis=1, method="average"))


def test_metrics_on_a_batch_of_rows_equal_row_by_row():
    rng = np.random.default_rng(7)
    targets = rng.normal(size=(6, 40))
    predicted = targets + rng.normal(size=(6, 40))
    labels, guesses = (targets > 0).astype(int), (predicted > 0).astype(int)
    for name, (a, b) in {
        "accuracy": (labels, guesses),
        "f1": (labels, guesses),
        "pearson": (targets, predicted),
        "spearman": (targets, predicted),
        "rmse": (targets, predicted),
    }.items():
        batch = metrics.METRICS[name](a, b)
        assert batch.shape == (6,)
        for row in range(6):
            assert batch[row] == pytest.approx(reference(name, a[row], b[row]), abs=1e-10), name


def test_pearson_of_a_constant_is_nan():
    assert math.isnan(metrics.pearson(np.ones(5), np.arange(5.0)))


# --- the paired bootstrap --------------------------------------------------------------------------------


def loop_bootstrap(metric, targets, a, b, indices, confidence=0.95):
    """The same resamples scored one by one with the independent references, then NumPy's percentile."""
    deltas = []
    for row in indices:
        t, pa, pb = targets[row], a[row], b[row]
        try:
            value = reference(metric, t, pb) - reference(metric, t, pa)
        except ValueError:
            continue
        if math.isfinite(value):
            deltas.append(value)
    tail = (1 - confidence) / 2 * 100
    return np.percentile(deltas, [tail, 100 - tail])


@pytest.mark.parametrize("metric", ["accuracy", "f1", "pearson", "spearman", "rmse"])
def test_paired_bootstrap_equals_a_loop_over_the_same_resamples(metric):
    rng = np.random.default_rng(11)
    n = 120
    if metric in ("accuracy", "f1"):
        targets = rng.integers(0, 2, size=n)
        a = np.where(rng.random(n) < 0.85, targets, 1 - targets)
        b = np.where(rng.random(n) < 0.8, targets, 1 - targets)
    else:
        targets = rng.normal(size=n)
        a = targets + rng.normal(0, 0.5, size=n)
        b = targets + rng.normal(0, 0.7, size=n)
    indices = bootstrap_indices(n, resamples=200, seed=5)
    change = paired_bootstrap(metric, targets, a, b, indices)
    assert change.value == pytest.approx(
        reference(metric, targets, b) - reference(metric, targets, a), abs=1e-10
    )
    low, high = loop_bootstrap(metric, targets, a, b, indices)
    assert (change.low, change.high) == pytest.approx((low, high), abs=1e-10)
    assert change.resamples == 200


def test_paired_bootstrap_agrees_with_scipy_percentile_interval():
    """scipy.stats.bootstrap (paired, percentile) draws other resamples: the intervals agree within MC error."""
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < 0.88, labels, 1 - labels)
    b = np.where(
        rng.random(n) < 0.03, 1 - a, a
    )  # a quantized model: a few flips of the float model's answers

    def delta(t, pa, pb, axis=-1):
        return (pb == t).mean(axis=axis) - (pa == t).mean(axis=axis)

    theirs = stats.bootstrap(
        (labels, a, b),
        delta,
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    ours = paired_bootstrap("accuracy", labels, a, b, bootstrap_indices(n, 4000, seed=2))
    assert ours.low == pytest.approx(theirs.low, abs=0.002)
    assert ours.high == pytest.approx(theirs.high, abs=0.002)
    assert ours.low < ours.value < ours.high


def test_identical_models_have_a_zero_interval_and_a_better_one_a_positive_one():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=500)
    worse = np.where(rng.random(500) < 0.7, labels, 1 - labels)
    indices = bootstrap_indices(500, 300, seed=0)
    same = paired_bootstrap("accuracy", labels, worse, worse, indices)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap("accuracy", labels, worse, labels, indices)
    assert better.low > 0.2


def test_bootstrap_indices_are_seeded():
    np.testing.assert_array_equal(bootstrap_indices(50, 10, seed=1), bootstrap_indices(50, 10, seed=1))
    assert not np.array_equal(bootstrap_indices(50, 10, seed=1), bootstrap_indices(50, 10, seed=2))


def test_bootstrap_refuses_bad_arguments():
    indices = bootstrap_indices(4, 10)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap("auc", np.zeros(4), np.zeros(4), np.zeros(4), indices)
    with pytest.raises(ValueError, match="4 targets but 3"):
        paired_bootstrap("accuracy", np.zeros(4), np.zeros(3), np.zeros(4), indices)
    with pytest.raises(ValueError, match="positions"):
        paired_bootstrap("accuracy", np.zeros(3), np.zeros(3), np.zeros(3), indices)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_indices(1)
    with pytest.raises(ValueError, match="undefined on every resample"):
        paired_bootstrap("pearson", np.ones(4), np.ones(4), np.ones(4), indices)
