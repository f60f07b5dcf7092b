"""Two or more exports of one model timed side by side on ONNX Runtime: e.g. an integer export made by an
older checkout against today's (issue 16: an integer export must not become slower).

Each export's model.onnx is loaded with the benchmark's session options (all graph optimizations, the
given threads); they take turns, one call each per round, on the same random full batch
(`benchmarks.measure.time_shape`), so a change in the machine's load hits all of them alike. Prints the
median and 90th percentile of each, the ratio of each median to the first's, and the load average at
the start and the end; `--output` writes the same as JSON.

    PYTHONPATH=. python -m benchmarks.side_by_side OLD_EXPORT NEW_EXPORT [--batch 8] [--sequence 128]
        [--rounds 7] [--threads 2] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import load_now, summarize, time_shape  # noqa: E402
from benchmarks.variants import Feeds, random_feeds, session_options  # noqa: E402


def _runner(model: Path, threads: int, feeds: Feeds) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])
    own = {name: value for name, value in feeds.items() if name in {i.name for i in session.get_inputs()}}
    return lambda _feeds: session.run(None, own)


def model_file(path: Path) -> Path:
    """An export directory's model.onnx, or the ONNX file itself."""
    model = path / "model.onnx" if path.is_dir() else path
    if not model.is_file():
        raise SystemExit(f"{path}: no model.onnx there; give an export directory or an ONNX file")
    return model


def compare(paths: list[Path], batch: int, sequence: int, rounds: int, threads: int) -> dict[str, Any]:
    models = [model_file(p) for p in paths]
    config = json.loads((models[0].parent / "config.json").read_text()) if (models[0].parent / "config.json").is_file() else {}
    feeds = random_feeds(batch, sequence, int(config.get("vocab_size", 30522)))
    load_start = load_now()
    runners = {str(p): _runner(m, threads, feeds) for p, m in zip(paths, models)}
    latencies = time_shape(runners, feeds, rounds, min_calls_s=0.0)
    timings = [summarize(model, model, batch, sequence, latencies[model]) for model in runners]
    first = timings[0].median_ms
    return {
        "batch": batch, "sequence": sequence, "threads": threads, "rounds": rounds,
        "load_average": [round(load_start, 2), round(load_now(), 2)],
        "exports": [{"path": t.model, "calls": t.calls, "median_ms": t.median_ms, "p90_ms": t.p90_ms,
                     "x_first": round(t.median_ms / first, 3)} for t in timings],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path, help="export directories (or ONNX files), the first the baseline")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="calls of each export, taking turns (after a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if len(args.exports) < 2:
        parser.error("give two or more exports to compare")
    result = compare(args.exports, args.batch, args.sequence, args.rounds, args.threads)
    for row in result["exports"]:
        print(f"{row['path']}: median {row['median_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms ({row['calls']} calls), "
              f"{row['x_first']:.3f} x the first")
    print(f"batch {args.batch} x sequence {args.sequence}, {args.threads} threads; load average "
          f"{result['load_average'][0]} -> {result['load_average'][1]}")
    if args.output:
        from trt_runtime.contract.files import write_json_atomic

        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
