"""`python -m trt_runtime triton-serve REPO`: run a real Triton Inference Server on a model repository.

Uses the `tritonserver` bundled in the nvidia-pytriton wheel, in a virtual environment of its own (made
on first use, about a minute; `--env`, or $TRITON_SERVER_ENV). It serves the Python-backend models of
`triton-repo` (make the repository with `--kinds text,onnx --onnx-backend python`: this server has no
onnxruntime or tensorrt backend). Listens on loopback by default, prints the endpoints, and stops
cleanly on Ctrl-C or SIGTERM (or after --duration seconds).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

NAME = "triton-serve"
HELP = "serve a triton-repo repository with a local Triton Inference Server (nvidia-pytriton's tritonserver)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip() if __doc__ else None
    parser.add_argument("repository", nargs="?", metavar="REPO", help="model repository (from triton-repo)")
    parser.add_argument(
        "--env", help="server environment directory (default: $TRITON_SERVER_ENV or ~/.cache/...)"
    )
    parser.add_argument("--setup-only", action="store_true", help="make the server environment and exit")
    parser.add_argument("--no-setup", action="store_true", help="fail instead of making the environment")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--http-port", type=int, default=8000, help="0: any free port (so are the others)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log", help="server log file (default: a temporary file, printed on failure)")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for all models")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    from trt_runtime.triton.server import TritonServer, TritonServerError, server_environment

    try:
        environment = server_environment(args.env, create=not args.no_setup)
        if args.setup_only:
            print(f"server environment: {environment.root}\ntritonserver: {environment.tritonserver}")
            return 0
        if not args.repository:
            print(
                "error: give the model repository (REPO), made by python -m trt_runtime triton-repo",
                file=sys.stderr,
            )
            return 2
        server = TritonServer(
            args.repository,
            environment,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_path=args.log,
        )
        server.check_repository()
    except TritonServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):  # also where a shell started us with SIGINT ignored
        signal.signal(signum, _on_signal)
    try:
        print(f"starting tritonserver on {args.repository} (log: {server.log_path}) ...", flush=True)
        server.start(timeout_s=args.start_timeout)
        models = sorted(p.parent.name for p in Path(args.repository).glob("*/config.pbtxt"))
        client = f"{environment.python} -m trt_runtime.triton.client"
        print(
            f"Triton Inference Server is ready with {', '.join(models)}\n"
            f"  HTTP    http://{server.http_url}  (GET /v2/models/{models[0]}/config)\n"
            f"  gRPC    {server.grpc_url}\n"
            f"  metrics {server.metrics_url}\n"
            f"  client  PYTHONPATH=. {client} text --url {server.http_url} --model {models[0]} 'some text'\n"
            f"Ctrl-C stops it.",
            flush=True,
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        while server.running and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
        if not server.running:
            print(
                f"error: tritonserver stopped by itself; its log ends:\n{server.log_tail()}", file=sys.stderr
            )
            return 1
    except (KeyboardInterrupt, _Stop) as e:
        print(f"\nstopping ({e or 'SIGINT'}) ...", flush=True)
    except TritonServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave the server running
            signal.signal(signum, signal.SIG_IGN)
        code = server.stop()
    print(f"tritonserver stopped (exit status {code})")
    return 0
