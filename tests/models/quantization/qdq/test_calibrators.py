"""Calibrators against NumPy float64 implementations written here, known answers, and NVIDIA modelopt."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from models.quantization import HistogramCalibrator, MaxCalibrator, QuantDescriptor, TensorQuantizer
from models.quantization.qdq.calibrators import amax_entropy, amax_mse


@pytest.fixture(scope="module")
def modelopt_histogram():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.calib import histogram
    return histogram


def distributions() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=g)
    return {
        "gauss": gauss,
        "laplace": -torch.sign(uniform := torch.rand(200_000, generator=g) - 0.5) * torch.log1p(-2 * uniform.abs()),
        "uniform": torch.rand(200_000, generator=g) * 3 - 1.5,
        "outliers": torch.cat([gauss, torch.full((5,), 60.0)]),
        "softmax-like": torch.softmax(torch.randn(2000, 64, generator=g) * 3, dim=-1).flatten(),
    }


# -- NumPy float64 references of the pytorch-quantization / TensorRT definitions --------------------


def reference_entropy(counts: np.ndarray, edges: np.ndarray, num_bits=8, unsigned=False, start_bin=128) -> float:
    """TensorRT's entropy calibration, candidate by candidate as pytorch-quantization's _compute_amax_entropy
    states it (np.digitize onto the quantized levels, mean over each level's non-empty bins, KL divergence)."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nonempty = bins[:i] > 0
        sums = np.bincount(level[nonempty], weights=bins[:i][nonempty], minlength=levels)
        sizes = np.bincount(level[nonempty], minlength=levels)
        q = np.where(nonempty, sums[level] / np.maximum(sizes[level], 1), 0.0)
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.sum(np.where(p > 0, p * np.log(p / q), 0.0))
        divergences.append(kl if np.isfinite(kl) else np.inf)
    divergences = np.array(divergences)
    last_min = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[last_min + start_bin])


def reference_mse_errors(counts: np.ndarray, edges: np.ndarray, num_bits=8, start_bin=128) -> tuple[np.ndarray, np.ndarray]:
    centers = (edges[1:] + edges[:-1]) / 2
    bound = 2 ** (num_bits - 1) - 1
    candidates = centers[start_bin:]
    errors = []
    for amax in candidates:
        scale = amax / bound
        quantized = np.clip(np.rint(centers / scale), -bound, bound) * scale
        errors.append(np.sum(counts * (quantized - centers) ** 2))
    return candidates, np.array(errors)


def reference_percentile(counts: np.ndarray, edges: np.ndarray, percentile: float) -> set[float]:
    """Left edge of the bin where the cumulative count reaches the percentile; both bins when it lands exactly
    on a bin's end (99.9 % of 200,000 samples is a whole count, decided by rounding)."""
    cumulative = np.cumsum(counts)
    threshold = percentile / 100 * counts.sum()
    first = int(np.argmax(cumulative >= threshold * (1 - 1e-12)))
    last = int(np.argmax(cumulative >= threshold * (1 + 1e-12)))
    return {float(np.float32(edges[i])) for i in range(first, last + 1)}


def collect(values: torch.Tensor, chunks: int = 1) -> HistogramCalibrator:
    calibrator = HistogramCalibrator()
    for part in values.chunk(chunks):
        calibrator.collect(part)
    return calibrator


# -- max --------------------------------------------------------------------------------------------


def test_max_calibrator_per_tensor_and_per_channel():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, (4, 6, 5)).astype(np.float32) for s in (1.0, 3.0, 0.5)]
    per_tensor = MaxCalibrator()
    per_channel = MaxCalibrator(axis=1)
    for batch in batches:
        per_tensor.collect(torch.from_numpy(batch))
        per_channel.collect(torch.from_numpy(batch))
    stacked = np.concatenate(batches)
    assert per_tensor.compute_amax().item() == np.abs(stacked).max()
    expected = np.abs(stacked).max(axis=(0, 2), keepdims=True)
    np.testing.assert_array_equal(per_channel.compute_amax().numpy(), expected)
    with pytest.raises(ValueError, match="amax shape changed"):
        per_channel.collect(torch.ones(4, 7, 5))


def test_max_calibrator_matches_modelopt():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.calib import MaxCalibrator as ModeloptMax
    x = torch.randn(32, 16, 8)
    for axis in (None, 0, 1):
        ours, theirs = MaxCalibrator(axis=axis), ModeloptMax(axis=axis)
        for part in x.chunk(4):
            ours.collect(part)
            theirs.collect(part)
        assert torch.equal(ours.compute_amax().reshape(-1), theirs.compute_amax().reshape(-1))


# -- histogram --------------------------------------------------------------------------------------


def test_histogram_grows_by_whole_bins():
    first = torch.rand(10_000) * 1.0
    second = torch.rand(10_000) * 4.0
    calibrator = HistogramCalibrator()
    calibrator.collect(first)
    calibrator.collect(second)
    counts, edges = calibrator.histogram
    width = first.max().item() / 2048
    assert np.allclose(np.diff(edges), width)  # same width: old counts stay in their bins
    assert edges[-1] >= second.max().item() > edges[-2]
    expected = np.histogram(np.concatenate([first.numpy(), second.numpy()]).astype(np.float64), bins=edges)[0]
    assert counts.sum() == 20_000
    # torch.histc bins in float32, NumPy in float64: a value on a bin edge may land one bin over
    assert np.abs(np.cumsum(counts) - np.cumsum(expected)).max() <= 5
    assert np.abs(counts - expected).sum() <= 40


def test_histogram_is_of_absolute_values():
    x = torch.randn(50_000)
    pos, both = collect(x.abs()), collect(x)
    assert np.array_equal(pos.histogram[0], both.histogram[0])


@pytest.mark.parametrize("percentile", [99.9, 99.99, 99.999])
def test_percentile_against_numpy(percentile):
    for name, x in distributions().items():
        calibrator = collect(x, chunks=3)
        counts, edges = calibrator.histogram
        got = calibrator.compute_amax("percentile", percentile=percentile).item()
        assert got in reference_percentile(counts, edges, percentile), name
        # and it is the data's own percentile, to the bin width (a bin or two where the tail is sparse)
        exact = np.percentile(x.abs().numpy().astype(np.float64), percentile, method="inverted_cdf")
        assert got == pytest.approx(exact, rel=0.01), name


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
def test_entropy_against_numpy_loop(unsigned):
    for name, x in distributions().items():
        counts, edges = collect(x).histogram
        expected = reference_entropy(counts, edges, unsigned=unsigned)
        got = amax_entropy(counts, edges, num_bits=8, unsigned=unsigned)
        assert got == pytest.approx(expected, rel=1e-9), name


def test_entropy_known_answers():
    dist = distributions()
    # an outlier arriving in a later batch grows the histogram to ~27,000 bins: still the same answer, fast
    grown = collect(dist["outliers"], chunks=2)
    assert len(grown.histogram[0]) > 20_000
    assert 3.0 < grown.compute_amax("entropy").item() < 8.0
    # uniform data: nothing to clip, the whole range is kept
    uniform = collect(dist["uniform"]).compute_amax("entropy").item()
    assert uniform >= 0.97 * dist["uniform"].abs().max().item()
    # a few far outliers are clipped: amax stays near the bulk of a unit Gaussian
    outliers = collect(dist["outliers"]).compute_amax("entropy").item()
    assert 3.0 < outliers < 8.0


def test_mse_against_numpy():
    for name, x in distributions().items():
        counts, edges = collect(x).histogram
        candidates, errors = reference_mse_errors(counts, edges)
        got = amax_mse(counts, edges, num_bits=8, unsigned=False)
        chosen_error = errors[np.argmin(np.abs(candidates - got))]
        assert chosen_error <= errors.min() * (1 + 1e-9), name


def test_mse_known_answer():
    """Uniform on [0, 1]: clipping at c costs (1 - c)^3 / 3, rounding c^3 / (12 * 127^2); the optimum is c ~ 0.996."""
    x = torch.rand(400_000, generator=torch.Generator().manual_seed(1))
    amax = collect(x).compute_amax("mse").item()
    assert 0.99 <= amax <= 1.0


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_against_modelopt_histogram_calibrator(modelopt_histogram, method):
    """modelopt's HistogramCalibrator (pytorch-quantization's code) on the same tensors: same histogram, same amax."""
    for name, x in distributions().items():
        if method == "entropy" and name not in ("gauss", "outliers"):
            continue  # modelopt's Python loop takes seconds per histogram
        theirs = modelopt_histogram.HistogramCalibrator()
        theirs.collect(x)
        ours = collect(x)
        np.testing.assert_array_equal(ours.histogram[0], theirs._calib_hist.numpy())
        kwargs = {"percentile": 99.99} if method == "percentile" else {}
        expected = theirs.compute_amax(method, **kwargs).item()
        assert ours.compute_amax(method, **kwargs).item() == pytest.approx(expected, rel=1e-6), name


def test_mse_against_modelopt_quantizer(modelopt_histogram):
    """modelopt 0.47's _compute_amax_mse passes num_bits in bias's place, so its own result is wrong
    (amax 0.28 for a unit Gaussian); the same search with its fake_tensor_quant called correctly agrees with ours."""
    from modelopt.torch.quantization.tensor_quant import fake_tensor_quant

    x = distributions()["laplace"]
    calibrator = collect(x)
    counts, edges = calibrator.histogram
    centers = torch.from_numpy((edges[1:] + edges[:-1]) / 2).float()
    weights = torch.from_numpy(counts).float()
    errors = [
        ((fake_tensor_quant(centers, centers[i], None, 8, False) - centers) ** 2 * weights).mean().item()
        for i in range(128, len(centers))
    ]
    expected = centers[128 + int(np.argmin(errors))].item()
    assert calibrator.compute_amax("mse").item() == pytest.approx(expected, rel=2e-3)


def test_tensor_quantizer_calibration_modes():
    q = TensorQuantizer(QuantDescriptor(calib_method="histogram"))
    q.disable_quant()
    q.enable_calib()
    x = torch.randn(100_000)
    assert torch.equal(q(x), x)  # calibration mode passes the float tensor through
    q.load_calib_amax("percentile", percentile=99.9)
    q.disable_calib()
    q.enable_quant()
    counts, edges = q.calibrator.histogram
    assert q.amax.item() in reference_percentile(counts, edges, 99.9)
    with pytest.raises(ValueError, match="method must be one of"):
        q.load_calib_amax("max")
    with pytest.raises(ValueError, match="per-channel quantizers"):
        TensorQuantizer(QuantDescriptor(axis=0, calib_method="histogram"))


# -- calibration data (models/data.py, calibration_data/) -------------------------------------------


def test_shipped_calibration_file_is_the_calibration_split():
    import hashlib

    from models.data import CALIBRATION_FILE, SOURCES, calibration_subset, labelled_sentences, load_texts

    shipped = load_texts()
    assert shipped == calibration_subset() == CALIBRATION_FILE.read_text(encoding="utf-8").splitlines()
    assert 500 <= len(shipped) <= 1000
    everything = labelled_sentences()
    assert len(everything) == 23_703
    assert {s.source for s in labelled_sentences("calibration")} == set(SOURCES)

    def normalized(text):
        return " ".join(text.split()).casefold()

    held_out = {normalized(s.text) for s in everything if s.split != "calibration"}
    assert not held_out & {normalized(t) for t in shipped}  # no calibration sentence is evaluated on
    for split, share in [("calibration", 0.04), ("train", 0.76), ("dev", 0.10), ("test", 0.10)]:
        rows = labelled_sentences(split)
        assert abs(len(rows) / len(everything) - share) < 0.01, split
        for row in rows[:20]:  # the documented rule, recomputed here
            digest = hashlib.sha256(f"qbert-deploy split v1\n{normalized(row.text)}".encode()).digest()
            position = int.from_bytes(digest[:8], "big") / 2**64
            assert {"calibration": 0 <= position < 0.04, "train": 0.04 <= position < 0.8,
                    "dev": 0.8 <= position < 0.9, "test": 0.9 <= position < 1}[split]
    assert all(-4 <= s.score <= 4 for s in everything)


def test_load_texts_formats_and_errors(tmp_path):
    from models.data import DataError, load_texts

    (tmp_path / "a.txt").write_text("first sentence\n\nsecond\tits pair\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n{"text": "q", "text_pair": "a"}\n', encoding="utf-8")
    (tmp_path / "README.md").write_text("not data")
    assert load_texts(tmp_path / "a.txt") == ["first sentence", ("second", "its pair")]
    assert load_texts(tmp_path) == ["first sentence", ("second", "its pair"), "third", ("q", "a")]
    bad = {
        "x.txt": ("a\tb\tc\n", r"x\.txt:1: 2 tabs"),
        "y.jsonl": ('{"text": "ok"}\n{oops\n', r"y\.jsonl:2: not valid JSON"),
        "z.jsonl": ('{"sentence": "no text field"}\n', r'z\.jsonl:1: .*"text" field'),
        "e.txt": ("\n\n", "holds no text"),
        "w.csv": ("a,b\n", "must be a .txt or .jsonl"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / "bad").mkdir(exist_ok=True)
        path = tmp_path / "bad" / name
        path.write_text(content)
        with pytest.raises(DataError, match=message):
            load_texts(path)
    with pytest.raises(DataError, match="not found"):
        load_texts(tmp_path / "missing.txt")


def test_calibration_batches_tokenize_with_the_checkpoint_tokenizer(minilm_dir):
    import transformers

    from models.data import calibration_batches, labelled_batches

    texts = ["A short one.", "A somewhat longer sentence than the first.", "Third.", ("Is it?", "Yes, it is.")]
    batches = calibration_batches(texts, minilm_dir, batch_size=2, max_length=8, num_samples=4)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1, 1]  # the pair starts its own batch
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    expected = tokenizer(texts[:2], padding=True, truncation=True, max_length=8, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batches[0][key].dtype == torch.int64
        assert torch.equal(batches[0][key], expected[key])
    assert batches[2]["token_type_ids"].max() == 1  # the pair's second text
    no_types = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(minilm_dir / "tokenizer.json"), model_input_names=["input_ids", "attention_mask"],
        pad_token="[PAD]",
    )
    batch = calibration_batches(texts[:2], no_types)[0]
    assert torch.equal(batch["token_type_ids"], torch.zeros_like(batch["input_ids"]))
    labelled = labelled_batches(texts[:3], [0, 1, 1], tokenizer, batch_size=2)
    assert labelled[0]["labels"].tolist() == [0, 1] and labelled[0]["labels"].dtype == torch.int64
