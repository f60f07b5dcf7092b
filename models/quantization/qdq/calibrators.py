"""Calibrators: collect statistics of the tensors a quantizer sees and turn them into an amax.

Semantics follow pytorch-quantization (and NVIDIA modelopt, which kept them):
- `MaxCalibrator`: the running absolute maximum, per tensor or per channel.
- `HistogramCalibrator`: a histogram of |x| on [0, max] with 2048 bins whose range grows (by adding
  bins of the same width) when a later batch holds a larger value; `compute_amax` then picks
    "percentile": the left edge of the bin where the cumulative count reaches the percentile,
    "mse": the bin centre that minimizes the histogram-weighted squared fake-quantization error,
    "entropy": the bin edge that minimizes the KL divergence between the clipped histogram and its
               quantized version (TensorRT's entropy calibrator, pytorch-quantization's
               `_compute_amax_entropy`), here vectorized over candidate edges instead of looped in Python.
The histogram is of |x| because the quantizers are symmetric (zero point 0); where every input is
non-negative (softmax output) that is the data itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch

HISTOGRAM_METHODS = ("percentile", "mse", "entropy")


def reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The dimensions to reduce so that one amax remains per index of `axis` (all of them for per-tensor)."""
    if axis is None:
        return tuple(range(ndim))
    if not -ndim <= axis < ndim:
        raise ValueError(f"quantization axis {axis} is out of range for a tensor with {ndim} dimensions")
    keep = axis % ndim
    return tuple(d for d in range(ndim) if d != keep)


def abs_max(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """max |x| over every dimension but `axis`, keeping dims (shape [C, 1] for a Linear weight on axis 0)."""
    x = x.detach()
    if axis is None:
        return x.abs().amax().float()
    return x.abs().amax(dim=reduce_axes(x.dim(), axis), keepdim=True).float()


class MaxCalibrator:
    """Tracks the absolute maximum of every tensor collected, per tensor or per channel."""

    def __init__(self, num_bits: int = 8, axis: int | None = None, unsigned: bool = False, track_amax: bool = False):
        self._num_bits = num_bits
        self._axis = axis
        self._unsigned = unsigned
        self._track_amax = track_amax
        self._amaxs: list[np.ndarray] = []
        self._calib_amax: torch.Tensor | None = None

    @property
    def amaxs(self) -> list[np.ndarray]:
        """Each collected tensor's own amax, when constructed with track_amax=True."""
        return self._amaxs

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        local = abs_max(x, self._axis)
        if not torch.isfinite(local).all():
            raise ValueError("calibration input contains NaN or infinity; check the model and its inputs")
        if self._calib_amax is None:
            self._calib_amax = local
        elif local.shape != self._calib_amax.shape:
            raise ValueError(
                f"per-channel amax shape changed from {tuple(self._calib_amax.shape)} to {tuple(local.shape)} "
                f"between calibration batches (axis {self._axis})"
            )
        else:
            self._calib_amax = torch.maximum(self._calib_amax, local)
        if self._track_amax:
            self._amaxs.append(local.cpu().numpy())

    def reset(self) -> None:
        self._calib_amax = None
        self._amaxs = []

    def compute_amax(self) -> torch.Tensor | None:
        """The absolute maximum of everything collected (None before the first tensor)."""
        return self._calib_amax

    def __repr__(self) -> str:
        return f"MaxCalibrator(num_bits={self._num_bits}, axis={self._axis}, unsigned={self._unsigned})"


class HistogramCalibrator:
    """Histogram of |x| for percentile / mse / entropy calibration (per tensor only, as in the original)."""

    def __init__(self, num_bits: int = 8, axis: int | None = None, unsigned: bool = False, num_bins: int = 2048,
                 skip_zeros: bool = False):
        if axis is not None:
            raise ValueError(
                "HistogramCalibrator collects one histogram per tensor; per-channel quantizers (axis set) "
                "are calibrated with the max calibrator"
            )
        self._num_bits = num_bits
        self._unsigned = unsigned
        self._initial_num_bins = num_bins
        self._skip_zeros = skip_zeros
        self._calib_hist: torch.Tensor | None = None  # float64 counts
        self._bin_width: float | None = None

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(counts, bin_edges) collected so far, or None."""
        if self._calib_hist is None or self._bin_width is None:
            return None
        counts = self._calib_hist.numpy().copy()
        return counts, np.arange(len(counts) + 1, dtype=np.float64) * self._bin_width

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> None:
        x = x.detach().abs().float().reshape(-1)
        if self._skip_zeros:
            x = x[x != 0]
        if x.numel() == 0:
            return
        x_max = float(x.max())
        if not math.isfinite(x_max):
            raise ValueError("calibration input contains NaN or infinity; check the model and its inputs")
        if self._calib_hist is None:
            if x_max == 0.0:
                x_max = 1.0 / (1 << 24)  # an all-zero first batch: a tiny range that later batches grow
            self._bin_width = x_max / self._initial_num_bins
            self._calib_hist = torch.zeros(self._initial_num_bins, dtype=torch.float64)
        assert self._bin_width is not None
        num_bins = self._calib_hist.numel()
        if x_max > num_bins * self._bin_width:
            # Grow the range by whole bins of the same width, so earlier counts stay where they are.
            num_bins = math.ceil(x_max / self._bin_width)
            grown = torch.zeros(num_bins, dtype=torch.float64)
            grown[: self._calib_hist.numel()] = self._calib_hist
            self._calib_hist = grown
        hist = torch.histc(x, bins=num_bins, min=0.0, max=float(num_bins * self._bin_width))
        self._calib_hist += hist.double()

    def reset(self) -> None:
        self._calib_hist = None
        self._bin_width = None

    def compute_amax(
        self, method: str, *, percentile: float = 99.99, stride: int = 1, start_bin: int = 128
    ) -> torch.Tensor | None:
        """amax by `method` ("percentile", "mse" or "entropy") from the histogram (None before any data)."""
        collected = self.histogram
        if collected is None:
            return None
        counts, edges = collected
        if method == "percentile":
            amax = amax_percentile(counts, edges, percentile)
        elif method == "mse":
            amax = amax_mse(counts, edges, self._num_bits, self._unsigned, stride, start_bin)
        elif method == "entropy":
            amax = amax_entropy(counts, edges, self._num_bits, self._unsigned, stride, start_bin)
        else:
            raise ValueError(f"unknown histogram calibration method {method!r}; use one of {', '.join(HISTOGRAM_METHODS)}")
        return torch.tensor(amax, dtype=torch.float32)

    def __repr__(self) -> str:
        bins = 0 if self._calib_hist is None else self._calib_hist.numel()
        return f"HistogramCalibrator(num_bits={self._num_bits}, unsigned={self._unsigned}, bins={bins})"


def amax_percentile(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """Left edge of the bin in which the cumulative share of the data reaches `percentile` %."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    total = counts.sum()
    if total == 0:
        return float(edges[-1])
    cdf = np.cumsum(counts / total)
    index = int(np.searchsorted(cdf, percentile / 100))
    return float(edges[min(index, len(edges) - 1)])


def _candidate_indices(num_bins: int, start_bin: int, stride: int, inclusive_end: bool) -> np.ndarray:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    stop = num_bins + 1 if inclusive_end else num_bins
    return np.arange(min(start_bin, max(stop - 1, 0)), stop, stride)


def amax_mse(
    counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool, stride: int = 1, start_bin: int = 128
) -> float:
    """The bin centre c_i that, as amax, minimizes sum_j counts_j * (fakequant(c_j; c_i) - c_j)^2."""
    centers = (edges[1:] + edges[:-1]) / 2
    candidates = _candidate_indices(len(centers), start_bin, stride, inclusive_end=False)
    bound = (1 << (num_bits - 1 + int(unsigned))) - 1
    errors = np.empty(len(candidates))
    for start in range(0, len(candidates), 256):  # chunks keep the [candidates, bins] arrays small
        chunk = candidates[start : start + 256]
        scale = centers[chunk, None] / bound
        quantized = np.clip(np.rint(centers[None, :] / scale), 0, bound) * scale
        errors[start : start + len(chunk)] = ((quantized - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)
    return float(centers[candidates[int(np.argmin(errors))]])


def amax_entropy(
    counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool, stride: int = 1, start_bin: int = 128
) -> float:
    """The bin edge that minimizes KL(P || Q) between the clipped histogram P and its quantized version Q.

    For a candidate of i bins, P is the first i bins with everything beyond added to the last one; Q
    merges the i bins into 2^(bits-1) (signed) or 2^bits (unsigned) levels and spreads each level's
    count evenly over its non-empty bins. Ties go to the largest candidate, as in the original.

    The original evaluates each candidate bin by bin (O(bins^2), minutes for a histogram that grew to
    tens of thousands of bins); here each is O(levels) from prefix sums, using that Q is constant over
    a level's non-empty bins: with p the counts of P, Sp = sum p = all data, Sq = sum of the first i bins,
        KL = (sum_j p_j log p_j - sum_levels p_level log mean_level) / Sp - log Sp + log Sq.
    """
    bins = counts.astype(np.float64).copy()
    if len(bins) > 1:
        bins[0] = bins[1]  # the zero bin is dominated by exact zeros (padding, ReLU); the original does this too
    levels = 1 << (num_bits - 1 + int(unsigned))
    candidates = _candidate_indices(len(bins), start_bin, stride, inclusive_end=True)
    candidates = candidates[candidates > 0]
    total = bins.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(bins)])
    cumulative_nonempty = np.concatenate([[0], np.cumsum(bins > 0)])
    cumulative_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(bins))])
    divergences = np.empty(len(candidates))
    for start in range(0, len(candidates), 4096):  # chunks keep the [candidates, levels] arrays small
        i = candidates[start : start + 4096]
        # Bin j falls in level floor(j * levels / i) (the original's np.digitize onto linspace(0, i, levels + 1),
        # exact here because levels is a power of two), so level k covers bins [ceil(k i / levels), ceil((k+1) i / levels)).
        bounds = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels
        level_sum = np.diff(cumulative[bounds], axis=1)
        level_nonempty = np.diff(cumulative_nonempty[bounds], axis=1)
        outliers = total - cumulative[i]
        last = bins[i - 1] + outliers  # P's last bin takes everything beyond the candidate edge
        p_level = level_sum.copy()
        p_level[np.arange(len(i)), ((i - 1) * levels) // i] += outliers
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mean = np.log(level_sum / level_nonempty)
            cross = np.where(level_nonempty > 0, p_level * log_mean, 0.0).sum(axis=1)
            kl = (cumulative_xlogx[i - 1] + _xlogx(last) - cross) / total - np.log(total) + np.log(cumulative[i])
        # P has mass where Q has none: the last bin is empty but takes outliers (or nothing is kept at all)
        kl[((bins[i - 1] == 0) & (outliers > 0)) | (cumulative[i] == 0)] = np.inf
        divergences[start : start + len(i)] = kl
    # the last index among (numerically) equal minima, like the original's argmin over the reversed list
    best = divergences.min()
    ties = np.flatnonzero(divergences <= best + 1e-12 * (1.0 + abs(best)))
    return float(edges[candidates[ties[-1]]])


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)
