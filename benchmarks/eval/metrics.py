"""Task metrics and the paired bootstrap of their change between two models (NumPy only).

Binary sentiment: accuracy and F1 of the positive class. Regression: Pearson and Spearman correlation
with the human score, and RMSE. `paired_bootstrap` resamples the test sentences with replacement (the
same resamples for both models, so the interval is for the *change*, with the shared difficulty of the
sentences cancelled out) and returns the percentile interval of `metric(b) - metric(a)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: metrics per task kind, the first one is the headline of the table and the plot
BINARY_METRICS = ("accuracy", "f1")
REGRESSION_METRICS = ("pearson", "spearman", "rmse")
#: metrics where lower is better (the others: higher is better)
LOWER_IS_BETTER = frozenset({"rmse"})

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rows(x: np.ndarray) -> np.ndarray:
    """[n] -> [1, n]; [r, n] unchanged: every metric works on a batch of resamples at once."""
    x = np.asarray(x)
    return x[None, :] if x.ndim == 1 else x


def _squeeze(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    return value[0] if np.asarray(like).ndim == 1 else value


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Share of predicted labels equal to the true ones (per row of a [resamples, n] batch)."""
    value = (_rows(labels) == _rows(predicted)).mean(axis=-1)
    return _squeeze(value, labels)


def f1(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of the positive class (label 1): 2 TP / (2 TP + FP + FN); 0 where there are no positives at all."""
    y, p = _rows(labels).astype(bool), _rows(predicted).astype(bool)
    tp = (y & p).sum(axis=-1)
    wrong = (y ^ p).sum(axis=-1)  # FP + FN
    denominator = 2 * tp + wrong
    value = np.divide(2.0 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return _squeeze(value, labels)


def pearson(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pearson correlation (per row); NaN where either side is constant."""
    x, y = _rows(targets).astype(np.float64), _rows(predicted).astype(np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (x * y).sum(axis=-1) / denominator
    return _squeeze(value, targets)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (scipy.stats.rankdata's "average")."""
    x = _rows(x)
    order = np.argsort(x, axis=-1, kind="stable")
    ranks = np.empty(x.shape, dtype=np.float64)
    for row in range(x.shape[0]):
        sorted_values = x[row, order[row]]
        # start of each run of equal values, and the average rank (1-based) of the run
        new_run = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
        run_id = np.cumsum(new_run) - 1
        starts = np.flatnonzero(new_run)
        ends = np.r_[starts[1:], len(sorted_values)]
        average = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
        ranks[row, order[row]] = average[run_id]
    return ranks


def spearman(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Spearman rank correlation (per row): Pearson of the average ranks."""
    value = pearson(rankdata(targets), rankdata(predicted))
    return _squeeze(value, targets)


def rmse(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Root mean squared error (per row)."""
    value = np.sqrt(((_rows(targets).astype(np.float64) - _rows(predicted)) ** 2).mean(axis=-1))
    return _squeeze(value, targets)


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
    "rmse": rmse,
}


@dataclass(frozen=True)
class Change:
    """metric(b) - metric(a) on the full test set, with its paired-bootstrap percentile interval."""

    metric: str
    value: float
    low: float
    high: float
    resamples: int
    confidence: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "metric": self.metric,
            "delta": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "resamples": self.resamples,
            "confidence": self.confidence,
        }


def bootstrap_indices(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[resamples, n] indices drawn with replacement (numpy's PCG64, seeded): the same for every model."""
    if n < 2:
        raise ValueError(f"the bootstrap needs at least 2 examples, got {n}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def paired_bootstrap(
    metric: str,
    targets: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    indices: np.ndarray,
    confidence: float = 0.95,
) -> Change:
    """The change metric(b) - metric(a) and its percentile interval over the resampled `indices`.

    targets / predicted_*: one entry per test example (labels and predicted labels, or scores). Both
    models are scored on the same resample each time (paired). Resamples where the metric is undefined
    (NaN: a constant resample, for correlations) are left out of the interval.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    targets, predicted_a, predicted_b = (np.asarray(x) for x in (targets, predicted_a, predicted_b))
    n = len(targets)
    if len(predicted_a) != n or len(predicted_b) != n:
        raise ValueError(f"{n} targets but {len(predicted_a)} and {len(predicted_b)} predictions")
    if indices.ndim != 2 or indices.size == 0 or int(indices.max()) >= n or int(indices.min()) < 0:
        raise ValueError(f"indices must be a [resamples, n] array of positions in [0, {n})")
    fn = METRICS[metric]
    value = float(fn(targets, predicted_b) - fn(targets, predicted_a))
    deltas = []
    for chunk in np.array_split(indices, max(1, len(indices) // 100)):  # bounded memory
        deltas.append(fn(targets[chunk], predicted_b[chunk]) - fn(targets[chunk], predicted_a[chunk]))
    all_deltas = np.concatenate(deltas)
    all_deltas = all_deltas[np.isfinite(all_deltas)]
    if all_deltas.size == 0:
        raise ValueError(f"{metric} is undefined on every resample")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(all_deltas, [tail, 100.0 - tail])
    return Change(metric, value, float(low), float(high), int(all_deltas.size), confidence)
