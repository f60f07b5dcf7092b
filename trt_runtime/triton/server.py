"""A real Triton Inference Server on this machine: the `tritonserver` that the nvidia-pytriton wheel bundles.

nvidia-pytriton 0.7.0 ships Triton 2.51's `tritonserver` binary (pytriton/tritonserver/bin), its
libraries (nvidia_pytriton.libs), the Python backend (pytriton/tritonserver/backends/python) and a
Python-backend stub per Python version (pytriton/tritonserver/python_backend_stubs/3.8 ... 3.13). It
has no onnxruntime and no tensorrt backend: on it, ONNX models are served through the Python backend
(`triton-repo --onnx-backend python`) and plans not at all (use NVIDIA's Triton container for those).

pytriton pins numpy < 2, so the server gets a virtual environment of its own (the server environment):
nvidia-pytriton (which brings tritonclient[grpc,http]), numpy < 2, and the onnxruntime, tokenizers, onnx and
sympy versions of the environment that creates it (so the Python models compute what the in-process pipeline
computes). It lives in `$TRITON_SERVER_ENV`, or `~/.cache/qbert-deploy/triton-server-py3.X` (kept
across clones of the project), and is re-created when those requirements change.

The server's Python-backend stub embeds libpython; it finds the environment's packages because the
environment's bin/ comes first on PATH (the interpreter locates its prefix from `python3` there), and the
base interpreter's libpython comes first on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from trt_runtime.contract.errors import QbertError

PYTRITON = "nvidia-pytriton==0.7.0"
ENV_VARIABLE = "TRITON_SERVER_ENV"
STAMP = "trt_runtime-server-env.json"
LOOPBACK = "127.0.0.1"
#: model config platform/backend -> the backend directory it needs
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "python": "python"}


class TritonServerError(QbertError, RuntimeError):
    """The server environment cannot be made, or the server does not start or stop; the message says why."""

    code = "triton-server"


def server_requirements() -> list[str]:
    """What the server environment installs: pytriton, numpy < 2, and this environment's onnxruntime,
    tokenizers, onnx and sympy versions (the same numbers in the server as in-process)."""
    requirements = [PYTRITON, "numpy>=1.26,<2"]
    # onnx and sympy: OrtRunner derives the CPU INT8 graph of qdq exports with them (trt_runtime.backends.onnxruntime.cpu_int8)
    for distribution in ("onnxruntime", "tokenizers", "onnx", "sympy"):
        try:
            requirements.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(distribution)
    return requirements


def default_environment_dir() -> Path:
    if os.environ.get(ENV_VARIABLE):
        return Path(os.environ[ENV_VARIABLE])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "qbert-deploy" / f"triton-server-py{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class ServerEnvironment:
    """A ready server environment: its Python and the tritonserver files found in it."""

    root: Path
    python: Path
    python_version: str  # "3.11": the Python-backend stub must match it
    tritonserver: Path
    #: --backend-directory: backends/python with the stub of python_version beside libtriton_python.so
    backend_directory: Path
    #: LD_LIBRARY_PATH entries: pytriton's bundled libraries, the base interpreter's libpython
    library_path: tuple[str, ...]
    requirements: tuple[str, ...]

    def environ(self, pythonpath: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
        """The environment for tritonserver (and for Python run in this environment)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*self.library_path, env.get("LD_LIBRARY_PATH", "")]).strip(
            ":"
        )
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(os.fspath(p) for p in pythonpath)
        else:
            env.pop("PYTHONPATH", None)
        return env

    def available_backends(self) -> list[str]:
        return sorted(p.name for p in self.backend_directory.iterdir() if p.is_dir())


def _run(command: Sequence[str | os.PathLike], what: str, timeout_s: float = 900) -> str:
    try:
        result = subprocess.run(
            [os.fspath(c) for c in command], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise TritonServerError(f"{what} took longer than {timeout_s:.0f} s and was stopped") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise TritonServerError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _probe(python: Path) -> dict[str, str]:
    """Where pytriton and libpython are, as the environment's own Python sees them."""
    code = (
        "import json, pathlib, sys, sysconfig, pytriton\n"
        "root = pathlib.Path(pytriton.__file__).parent\n"
        "config = sysconfig.get_config_var\n"
        "print(json.dumps({'pytriton': str(root), 'libs': str(root.parent / 'nvidia_pytriton.libs'),"
        " 'libdir': config('LIBDIR') or '', 'ldlibrary': config('LDLIBRARY') or '',"
        " 'version': f'{sys.version_info[0]}.{sys.version_info[1]}'}))"
    )
    return dict(json.loads(_run([python, "-c", code], "looking for tritonserver in the server environment")))


def _prepare_backends(root: Path, probe: dict[str, str]) -> Path:
    """backends/python = pytriton's Python backend + the stub for this Python (as pytriton itself does)."""
    dist = Path(probe["pytriton"]) / "tritonserver"
    stub = dist / "python_backend_stubs" / probe["version"] / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonServerError(
            f"{PYTRITON} has no Python-backend stub for Python {probe['version']} ({stub} missing); "
            f"make the server environment with Python 3.8-3.13"
        )
    backends = root / "tritonserver-backends"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_stamp(root: Path) -> ServerEnvironment | None:
    try:
        data = json.loads((root / STAMP).read_text(encoding="utf-8"))
        environment = ServerEnvironment(
            root=Path(data["root"]),
            python=Path(data["python"]),
            python_version=data["python_version"],
            tritonserver=Path(data["tritonserver"]),
            backend_directory=Path(data["backend_directory"]),
            library_path=tuple(data["library_path"]),
            requirements=tuple(data["requirements"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if environment.root != root or not environment.tritonserver.exists() or not environment.python.exists():
        return None
    return environment


def server_environment(
    root: str | os.PathLike | None = None, *, create: bool = True, log: Callable[[str], None] | None = None
) -> ServerEnvironment:
    """The server environment at `root` (default: default_environment_dir()), made if absent or stale.

    create=False raises TritonServerError instead of making it. Making it takes about a minute (pip
    downloads ~150 MB the first time, then uses its cache); a lock keeps two processes from making the
    same one at once.
    """
    root = Path(root or default_environment_dir()).absolute()
    requirements = tuple(server_requirements())
    environment = _read_stamp(root)
    if environment is not None and environment.requirements == requirements:
        return environment
    if not create:
        raise TritonServerError(
            f"no server environment at {root} with {', '.join(requirements)}; make it with "
            f"`python -m trt_runtime triton-serve --setup-only` (or leave out --no-setup)"
        )
    with _locked(root.with_name(root.name + ".lock")):
        environment = _read_stamp(root)  # another process may have made it meanwhile
        if environment is not None and environment.requirements == requirements:
            return environment
        (log or print)(f"making the Triton server environment in {root}: {' '.join(requirements)}")
        shutil.rmtree(root, ignore_errors=True)
        _run([sys.executable, "-m", "venv", root], f"python -m venv {root}", timeout_s=300)
        python = root / "bin" / "python"
        _run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            f"pip install {' '.join(requirements)} into {root}",
        )
        probe = _probe(python)
        tritonserver = Path(probe["pytriton"]) / "tritonserver" / "bin" / "tritonserver"
        if not tritonserver.exists():
            raise TritonServerError(
                f"{PYTRITON} installed but {tritonserver} is missing; delete {root} and retry"
            )
        library_path = [probe["libs"]]
        if probe["libdir"] and (Path(probe["libdir"]) / probe["ldlibrary"]).exists():
            library_path.append(probe["libdir"])  # the base interpreter's libpython, for the stub
        environment = ServerEnvironment(
            root=root,
            python=python,
            python_version=probe["version"],
            tritonserver=tritonserver,
            backend_directory=_prepare_backends(root, probe),
            library_path=tuple(library_path),
            requirements=requirements,
        )
        data = {k: (os.fspath(v) if isinstance(v, Path) else v) for k, v in asdict(environment).items()}
        (root / STAMP).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")  # last: marks it done
        return environment


def binary_problem(environment: ServerEnvironment) -> str | None:
    """Why the tritonserver binary cannot run on this machine (None: it runs), from `tritonserver --help`."""
    try:
        result = subprocess.run(
            [os.fspath(environment.tritonserver), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment.environ(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{environment.tritonserver} does not run here: {e}"
    if "Usage: tritonserver" not in result.stdout + result.stderr:
        return (
            f"{environment.tritonserver} does not run here: {(result.stdout + result.stderr).strip()[-500:]}"
        )
    return None


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` TCP ports free on `host` now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_PLATFORM = re.compile(r'^\s*(platform|backend)\s*:\s*"([^"]+)"', re.MULTILINE)


def repository_backends(repository: str | os.PathLike) -> dict[str, str]:
    """model name -> the backend directory its config.pbtxt needs."""
    needs = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        found: dict[str, str] = dict(_PLATFORM.findall(config.read_text(encoding="utf-8")))
        value = found.get("backend") or found.get("platform", "")
        needs[config.parent.name] = PLATFORM_BACKENDS.get(value, value)
    return needs


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the process that started it dies, so it never outlives it."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """`tritonserver` on a model repository, on loopback ports (0: free ones), as a context manager.

        with TritonServer("repo") as server:       # start(): waits until every model is ready
            print(server.http_url, server.grpc_url, server.metrics_url)
        # stop(): SIGINT, Triton finishes in-flight requests (exit_timeout_s), SIGKILL past timeout_s

    The server is started in a session of its own and gets SIGTERM when the starting process dies.
    Its log goes to `log_path` (default: a temporary file; `log_text()`).
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        environment: ServerEnvironment | None = None,
        *,
        host: str = LOOPBACK,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: str | os.PathLike | None = None,
        pythonpath: Sequence[str | os.PathLike] = (),
        exit_timeout_s: int = 10,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).absolute()
        if not self.repository.is_dir():
            raise TritonServerError(
                f"{self.repository} is not a directory; make it with python -m trt_runtime triton-repo"
            )
        self.environment = environment or server_environment()
        self.host = host
        ports = iter(free_ports(3, host if host != "0.0.0.0" else LOOPBACK))
        self.http_port = http_port or next(ports)
        self.grpc_port = grpc_port or next(ports)
        self.metrics_port = metrics_port or next(ports)
        self.pythonpath = list(pythonpath)
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = list(extra_args)
        self._own_log = log_path is None
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        )
        self.process: subprocess.Popen[bytes] | None = None

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def client_host(self) -> str:
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http takes it."""
        return f"{self.client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            os.fspath(self.environment.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.environment.backend_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]

    # --- life cycle --------------------------------------------------------------------------------

    def check_repository(self) -> None:
        """Refuse a repository with models whose backend this server lacks (saying how to regenerate it)."""
        available = set(self.environment.available_backends())
        missing = {
            name: backend
            for name, backend in repository_backends(self.repository).items()
            if backend not in available
        }
        if missing:
            listed = ", ".join(f"{name} ({backend})" for name, backend in sorted(missing.items()))
            raise TritonServerError(
                f"this tritonserver (from {PYTRITON}) has only the {', '.join(sorted(available))} "
                f"backend(s); these models need another: {listed}. Regenerate the repository for it "
                f"(triton-repo ... --kinds text,onnx --onnx-backend python), or serve plans and "
                f"onnxruntime_onnx models with NVIDIA's Triton container"
            )

    def start(self, timeout_s: float = 180) -> TritonServer:
        """Start the server and wait until it and all its models are ready (TritonServerError otherwise)."""
        if self.process is not None:
            raise TritonServerError("this server was already started")
        self.check_repository()
        log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes it until stop()
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment.environ(self.pythonpath),
                preexec_fn=_set_parent_death_signal,  # noqa: PLW1509
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise TritonServerError(
                    f"tritonserver exited with status {code} while starting; its log ({self.log_path}) "
                    f"ends:\n{self.log_tail()}"
                )
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TritonServerError(
                    f"tritonserver was not ready within {timeout_s:.0f} s; its log ({self.log_path}) ends:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def ready(self) -> bool:
        """GET /v2/health/ready: the server and every model are ready."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGINT (Triton drains in-flight requests for up to exit_timeout_s), then SIGKILL to the whole
        process group past timeout_s. Returns the exit status (None if it was not running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # stubs left behind, if any
            os.killpg(process.pid, signal.SIGKILL)
        return process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- HTTP JSON helpers (standard library, loopback) ---------------------------------------------

    def get_json(self, path: str) -> dict[str, Any]:
        """GET http://HOST:HTTP_PORT/PATH as JSON (an object)."""
        with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=30) as response:
            data = json.loads(response.read())
        if not isinstance(data, dict):
            raise TritonServerError(f"GET {path} answered {type(data).__name__}, not a JSON object")
        return data

    def model_config(self, model: str) -> dict[str, Any]:
        """The live server's config of `model` (what it made of config.pbtxt), as JSON."""
        return self.get_json(f"/v2/models/{model}/config")

    def model_statistics(self, model: str) -> dict[str, Any]:
        """/v2/models/MODEL/stats of its (only) version: inference_count, execution_count, ..."""
        return dict(self.get_json(f"/v2/models/{model}/stats")["model_stats"][0])

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_log and exc_type is None:
            self.log_path.unlink(missing_ok=True)
