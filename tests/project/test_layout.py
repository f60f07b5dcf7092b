"""The project's layout rules (docs/architecture.md), checked on the source: import directions, no import
cycles (imports inside functions count), a torch-free runtime and contract, tests mirroring the packages."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "exporter", "trt_runtime")
#: what `trt_runtime.contract` may import besides itself: the standard library and NumPy
CONTRACT_ALLOWED = {"numpy"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imported(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (inside functions and TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                yield (candidate if candidate in MODULES else module), node.lineno


def project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, _ in imported(path, name):
            if module in MODULES and module != name:
                edges[name].add(module)
    return edges


def test_models_and_exporter_use_only_the_contract_of_trt_runtime():
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(("models", "exporter")):
            continue
        for module, line in imported(path, name):
            if module.startswith("trt_runtime") and not module.startswith("trt_runtime.contract"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "models and exporter may import trt_runtime.contract and nothing else of it:\n" + "\n".join(bad)


def test_trt_runtime_needs_neither_torch_nor_the_torch_packages():
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("trt_runtime"):
            continue
        for module, line in imported(path, name):
            top = module.split(".")[0]
            # torch is allowed only where JIT TensorRT plugins launch their Triton kernels (DESIGN.md)
            if top in ("models", "exporter", "transformers") or (
                top == "torch" and not name.startswith("trt_runtime.backends.tensorrt.plugins")
            ):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "trt_runtime must run without torch, transformers, models and exporter:\n" + "\n".join(bad)


def test_the_contract_needs_only_the_standard_library_and_numpy():
    bad = []
    stdlib = set(sys.stdlib_module_names)
    for name, path in MODULES.items():
        if not name.startswith("trt_runtime.contract"):
            continue
        for module, line in imported(path, name):
            top = module.split(".")[0]
            if not (module.startswith("trt_runtime.contract") or top in stdlib or top in CONTRACT_ALLOWED or top == "__future__"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "trt_runtime.contract is standard library + NumPy only:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges = project_edges()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_tests_mirror_the_packages():
    loose = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    assert not loose, f"test files directly in tests/ (put them next to the unit they test): {loose}"
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name.startswith("test_"):
            assert (path.parent / "__init__.py").exists(), f"{path.parent} needs an __init__.py (unique module names)"


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_is_light(package):
    """`import models`, `import exporter`, `import trt_runtime` load neither torch nor onnxruntime."""
    import subprocess

    code = (
        f"import sys, {package}; heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules];"
        " print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import {package} loads {result.stdout.strip()}"
