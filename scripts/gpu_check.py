"""The Python half of scripts/gpu_check.sh: facts about the machine, the ibert kernel timings, the TensorRT
part, and the summary (results.json and a row for tests/GPU_RESULTS.md).

    python scripts/gpu_check.py env --out DIR
    python scripts/gpu_check.py kernels --out DIR [--batch 32 --sequence 128 --repeats 50]
    python scripts/gpu_check.py tensorrt --out DIR
    python scripts/gpu_check.py record --out DIR --part NAME --status passed|failed|skipped|timeout --seconds S
                                       [--rc N] [--reason TEXT]
    python scripts/gpu_check.py summarize --out DIR

Every subcommand writes JSON into DIR. Exit status: 0 done, 3 skipped (the part cannot run on this machine;
the JSON says why: {"skipped": reason}), 1 failed (the JSON has {"error": ...}), 2 bad arguments. Kernel timings: the ibert
Triton kernels (trt_runtime/backends/tensorrt/plugins/launchers.py, what the JIT plugins run) against
torch's float32 gelu / softmax / layer_norm at BERT-base shapes (hidden 768, 12 heads, FFN 3072), median
of CUDA-event timings after a warm-up; GB/s counts the float32 tensor read and the one written, and
"x torch" is torch's time over the kernel's (above 1: faster than torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's trt_runtime and tests/fixtures, whatever the working directory
PART_STATUSES = ("passed", "failed", "skipped", "timeout")
SKIPPED = 3  # exit status of a part that cannot run here
ROW_HEADER = "| GPU | date | TensorRT / Triton / driver | tests passed | notes |"


def _write(path: Path, data: Any) -> None:
    from trt_runtime.contract.files import write_json_atomic  # every project write goes through files.py

    write_json_atomic(path, data)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except Exception as e:  # a broken install is a fact worth recording, not a crash
        return None if isinstance(e, ImportError) else f"broken: {e}"
    version = getattr(imported, "__version__", None)
    return str(version) if version is not None else "installed (no __version__)"


def env_info() -> dict[str, Any]:
    """Python, the libraries the check uses, and the GPU and driver as nvidia-smi reports them."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "libraries": {name: _version(name) for name in ("numpy", "torch", "triton", "onnx", "onnxruntime",
                                                          "transformers", "pytest", "hypothesis")},
    }
    try:
        from trt_runtime.backends.tensorrt.libs import tensorrt_available

        info["tensorrt_usable"], info["tensorrt_reason"] = tensorrt_available()
    except Exception as e:
        info["tensorrt_usable"], info["tensorrt_reason"] = False, f"could not check: {e}"
    # `import tensorrt` alone proves nothing (tensorrt-stubs leaves a namespace package): libs decides
    info["libraries"]["tensorrt"] = _version("tensorrt") if info["tensorrt_usable"] else None
    try:
        query = "name,driver_version,memory.total,compute_cap"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        rows = [line.split(", ") for line in smi.stdout.strip().splitlines() if line.strip()]
        info["gpus"] = [dict(zip(query.split(","), row)) for row in rows]
    except (OSError, subprocess.SubprocessError) as e:
        info["gpus"] = []
        info["nvidia_smi"] = f"not available ({e})"
    try:
        import torch

        info["cuda_available"] = bool(torch.cuda.is_available())
        info["torch_cuda"] = torch.version.cuda
    except Exception as e:
        info["cuda_available"] = False
        info["torch_cuda"] = f"torch unavailable ({e})"
    return info


def gbps(nbytes: int, milliseconds: float) -> float:
    return nbytes / (milliseconds / 1000) / 1e9


def kernel_rows(timings: dict[str, dict[str, float]], nbytes: dict[str, int]) -> list[dict[str, Any]]:
    """One row per op: the kernel's and torch's median ms, both GB/s, and torch's time over the kernel's."""
    rows = []
    for op, times in timings.items():
        rows.append({
            "op": op,
            "ibert_ms": times["ibert"],
            "torch_ms": times["torch"],
            "ibert_gbps": round(gbps(nbytes[op], times["ibert"]), 1),
            "torch_gbps": round(gbps(nbytes[op], times["torch"]), 1),
            "x_torch": round(times["torch"] / times["ibert"], 3),
        })
    return rows


def _median_ms(fn: Any, repeats: int, warmup: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def kernel_bench(batch: int = 32, sequence: int = 128, repeats: int = 50) -> dict[str, Any]:
    """The ibert kernels against torch's float32 ops at BERT-base shapes (see the module docstring)."""
    try:
        import numpy as np
        import torch
    except ImportError as e:
        return {"skipped": f"torch is not installed ({e})"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)"}
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return {"skipped": f"Triton is not installed ({e})"}
    from trt_runtime.backends.tensorrt.plugins import launchers
    from trt_runtime.contract import ibert

    hidden, heads, ffn = 768, 12, 3072
    tokens = batch * sequence
    rng = np.random.default_rng(0)
    device = torch.device("cuda")

    def on_gpu(array: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    gelu_scale = np.float32(0.01)
    gelu_x = on_gpu((rng.integers(-800, 800, (tokens, ffn)) * gelu_scale).astype(np.float32))
    gelu_ints, gelu_floats = (on_gpu(t) for t in ibert.gelu_tables([float(gelu_scale)]))
    softmax_scale = 0.05
    attributes = _softmax_attributes(softmax_scale)
    scores = on_gpu((rng.integers(-200, 200, (batch, heads, sequence, sequence)) * np.float32(softmax_scale)).astype(np.float32))
    weight = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
    bias = rng.normal(0, 0.1, hidden).astype(np.float32)
    ln_attributes = ibert.layernorm_attributes(0.02, 1, weight)
    ln_x = on_gpu((rng.integers(-3000, 3000, (tokens, hidden)) * np.float32(0.02)).astype(np.float32))
    ln_ints, ln_floats = (on_gpu(t) for t in ibert.layernorm_tables(weight, bias))
    w, b = on_gpu(weight), on_gpu(bias)

    ops = {
        "gelu": (lambda: launchers.int_gelu(gelu_x, gelu_ints, gelu_floats),
                 lambda: torch.nn.functional.gelu(gelu_x), gelu_x),
        "softmax": (lambda: launchers.int_softmax(scores, attributes["input_scale"], attributes["exp_scale"], 8),
                    lambda: torch.softmax(scores, dim=-1), scores),
        "layer_norm": (lambda: launchers.int_layernorm(ln_x, w, b, ln_ints, ln_floats, ln_attributes["input_scale"],
                                                        ln_attributes["shift"]),
                       lambda: torch.nn.functional.layer_norm(ln_x, (hidden,), w, b), ln_x),
    }
    timings, nbytes = {}, {}
    for op, (ours, theirs, x) in ops.items():
        if not bool(torch.isfinite(ours()).all()):
            return {"error": f"the ibert {op} kernel gave non-finite values"}
        timings[op] = {"ibert": _median_ms(ours, repeats), "torch": _median_ms(theirs, repeats)}
        nbytes[op] = 2 * x.numel() * x.element_size()  # float32 in, float32 out
    return {
        "device": torch.cuda.get_device_name(0),
        "shapes": {"batch": batch, "sequence": sequence, "hidden": hidden, "heads": heads, "ffn": ffn},
        "repeats": repeats,
        "rows": kernel_rows(timings, nbytes),
    }


def _softmax_attributes(input_scale: float) -> dict[str, Any]:
    """IntSoftmax's attributes for `input_scale` with I-BERT's exp scale (as tests/fixtures do)."""
    import numpy as np

    from trt_runtime.contract import ibert

    c_int = int(np.floor((np.float32(1) / np.float32(input_scale) ** 2) * np.float32(ibert.EXP_C)))
    return ibert.softmax_attributes(input_scale, float(np.float32(c_int * 2.0**30 / 32767)))


def tensorrt_part(out: Path) -> dict[str, Any]:
    """Where TensorRT is usable: a tiny Q/DQ export built into an engine, its layer report, and the trtexec
    bench on it (the single-op and tiny-model engine tests run in the `tests` part)."""
    from trt_runtime.backends.tensorrt.libs import tensorrt_available

    usable, reason = tensorrt_available()
    if not usable:
        return {"skipped": reason}
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint
    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    work = out / "work"
    save_checkpoint(work / "checkpoint", "bert", "text-classification")
    directory = exporter.export(work / "checkpoint", work / "tiny-qdq", task="text-classification",
                                quantization="qdq", num_calibration_samples=32, log=None)
    import shutil

    result: dict[str, Any] = {}
    for name, options in (("fp32", BuildOptions(progress=False)), ("fp16", BuildOptions(fp16=True, progress=False))):
        built = build_engine(directory, options)
        result[name] = {"build_seconds": built.info.build_seconds, "layers": built.info.layers}
    if not (shutil.which("trtexec") or Path("/usr/src/tensorrt/bin/trtexec").exists()):
        result["trtexec"] = {"skipped": "trtexec not found (on PATH or /usr/src/tensorrt/bin)"}
        return result
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "RESULTS": str(out / "trtexec"),
           "ITERATIONS": "200", "TRTEXEC_CUDA_GRAPH": "1"}
    bench = subprocess.run(["bash", str(ROOT / "scripts" / "trtexec_bench.sh"), str(directory)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    result["trtexec"] = {"rc": bench.returncode, "tail": (bench.stdout + bench.stderr)[-2000:],
                         "results": [_read(p) for p in sorted((out / "trtexec").glob("trtexec-*.json"))]}
    return result


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts (and failed test names) from pytest's --junitxml file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as e:
        return {"error": f"no test report ({e})"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def record_part(out: Path, part: str, status: str, seconds: float, rc: int | None, reason: str) -> None:
    parts = _read(out / "parts.json") or {}
    parts[part] = {"status": status, "seconds": round(seconds, 1), "rc": rc, "reason": reason}
    _write(out / "parts.json", parts)


def summarize(out: Path) -> dict[str, Any]:
    """results.json: every part's record and output in one object."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "env": _read(out / "env.json"),
        "parts": _read(out / "parts.json") or {},
        "tests": parse_junit(out / "gpu-tests.xml") if (out / "gpu-tests.xml").exists() else None,
        "kernels": _read(out / "kernels.json"),
        "tensorrt": _read(out / "tensorrt.json"),
    }


def results_row(summary: dict[str, Any]) -> str:
    """The row for tests/GPU_RESULTS.md's table (ROW_HEADER)."""
    env = summary.get("env") or {}
    gpus = env.get("gpus") or []
    gpu = gpus[0].get("name", "?") if gpus else "no GPU found"
    driver = gpus[0].get("driver_version", "?") if gpus else "?"
    libraries = env.get("libraries") or {}
    versions = f"{libraries.get('tensorrt') or 'no TensorRT'} / {libraries.get('triton') or 'no Triton'} / {driver}"
    tests = summary.get("tests") or {}
    passed = (f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped"
              if "passed" in tests else "not run")
    notes = []
    for row in (summary.get("kernels") or {}).get("rows", []):
        notes.append(f"{row['op']} {row['ibert_gbps']} GB/s ({row['x_torch']}x torch)")
    kernels = summary.get("kernels") or {}
    if "skipped" in kernels:
        notes.append(f"kernels skipped: {kernels['skipped']}")
    for name, part in (summary.get("parts") or {}).items():
        if part.get("status") in ("failed", "timeout"):
            notes.append(f"{name} {part['status']}")
    date = str(summary.get("created", ""))[:10]
    cells = [gpu, date, versions, passed, "; ".join(notes) or "-"]
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("env", "kernels", "tensorrt", "summarize", "record"):
        command = sub.add_parser(name)
        command.add_argument("--out", required=True, type=Path, help="the results directory ($OUT)")
        if name == "kernels":
            command.add_argument("--batch", type=int, default=32)
            command.add_argument("--sequence", type=int, default=128)
            command.add_argument("--repeats", type=int, default=50)
        if name == "record":
            command.add_argument("--part", required=True)
            command.add_argument("--status", required=True, choices=PART_STATUSES)
            command.add_argument("--seconds", required=True, type=float)
            command.add_argument("--rc", type=int)
            command.add_argument("--reason", default="")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    if args.command == "env":
        _write(out / "env.json", env_info())
    elif args.command == "kernels":
        if min(args.batch, args.sequence, args.repeats) < 1:
            parser.error("--batch, --sequence and --repeats must be at least 1")
        try:
            result = kernel_bench(args.batch, args.sequence, args.repeats)
        except Exception as e:  # recorded, and the rest of the check goes on
            result = {"error": f"{type(e).__name__}: {e}"}
        _write(out / "kernels.json", result)
        print(json.dumps(result, indent=2))
        status = _status(result)
    elif args.command == "tensorrt":
        try:
            result = tensorrt_part(out)
        except Exception as e:  # recorded, and the rest of the check goes on
            result = {"error": f"{type(e).__name__}: {e}"}
        _write(out / "tensorrt.json", result)
        print(json.dumps({k: v for k, v in result.items() if k != "trtexec"}, indent=2)[:4000])
        status = _status(result)
    elif args.command == "record":
        record_part(out, args.part, args.status, args.seconds, args.rc, args.reason)
    else:
        summary = summarize(out)
        _write(out / "results.json", summary)
        row = results_row(summary)
        from trt_runtime.contract.files import write_text_atomic

        write_text_atomic(out / "gpu-results-row.md", row + "\n")
        print(ROW_HEADER)
        print(row)
    return status


def _status(result: dict[str, Any]) -> int:
    return SKIPPED if "skipped" in result else 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
