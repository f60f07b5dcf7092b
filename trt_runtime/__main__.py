"""`python -m trt_runtime COMMAND ...`: each command lives in its own module under trt_runtime/commands/.

A command module defines `NAME`, `HELP`, `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import trt_runtime.commands


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="python -m trt_runtime", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for info in sorted(pkgutil.iter_modules(trt_runtime.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"trt_runtime.commands.{info.name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        commands[module.NAME] = module
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 a check failed (e.g. `build --check`), 2 bad arguments or input."""
    parser, commands = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    literal: list[str] = []
    # `--` ends the options: what follows goes to a command that takes it as is (run's texts), unparsed
    # (argparse would drop the `--` and then parse "-5 degrees" after it as an option)
    if "--" in argv[1:] and getattr(commands.get(argv[0]), "TAKES_LITERALS", False):
        cut = argv.index("--")
        argv, literal = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if literal:
        args.literal_texts = literal
    return int(commands[args.command].main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
