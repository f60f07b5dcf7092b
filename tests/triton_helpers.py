"""Shared by the Triton tests: the server environment (made once, cached), the client run inside it, and
the ONNX signature of an export as Triton should see it.

tritonclient lives in the server environment (pytriton pins numpy < 2; this one has numpy 2), so the
tests run `python -m trt_runtime.triton.client ...` there and read its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import onnx
import pytest

from trt_runtime.triton.server import ServerEnvironment, TritonServerError, server_environment

ROOT = Path(__file__).resolve().parents[1]

#: ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
}


@cache
def _environment() -> ServerEnvironment | str:
    try:
        return server_environment(log=lambda message: print(message, flush=True))
    except TritonServerError as e:
        return str(e)


def environment() -> ServerEnvironment:
    """The server environment, or a skip saying why it cannot be made here (e.g. no package index)."""
    env = _environment()
    if isinstance(env, str):
        pytest.skip(f"the Triton server environment cannot be made here: {env}")
    return env


def run_client(env: ServerEnvironment, *args: str, timeout_s: float = 120) -> Any:
    """`python -m trt_runtime.triton.client ARGS` in the server environment; its JSON output."""
    result = subprocess.run(
        [os.fspath(env.python), "-m", "trt_runtime.triton.client", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env.environ(pythonpath=[ROOT]),
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"client {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout)


def onnx_signature(model_path: Path) -> dict[str, list[dict[str, Any]]]:
    """{"input": [...], "output": [...]} of the ONNX graph, as Triton config entries: name, data_type, dims
    without the batch axis (symbolic dims -1)."""
    graph = onnx.load(os.fspath(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def entries(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out.append({"name": value.name, "data_type": ONNX_TO_TRITON[tensor.elem_type], "dims": dims[1:]})
        return out

    return {"input": entries(graph.input), "output": entries(graph.output)}


def config_signature(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The same view of a model config (parsed config.pbtxt or a live server's JSON: dims may be strings)."""
    return {
        kind: [
            {"name": t["name"], "data_type": t["data_type"], "dims": [int(d) for d in t["dims"]]}
            for t in config.get(kind, [])
        ]
        for kind in ("input", "output")
    }
