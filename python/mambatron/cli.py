"""The ``mambatron`` command line."""
from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambatron",
        description="Train, evaluate and serve Mamba-1, Mamba-2, Transformer and hybrid language models.",
    )
    p.add_argument("--version", action="version", version=f"mambatron {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="a short timed tour of the engine on the best device found",
                       description="Checks the engine against its CPU reference and times the matrix "
                                   "product on the best device found (CUDA when available, else the CPU).")
    d.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best found)")
    d.add_argument("--size", type=int, default=None,
                   help="matrix size for the timing (default: 8192 on CUDA, 1024 on the CPU)")
    d.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")

    sub.add_parser("info", help="what this build has: version, CUDA, devices",
                   description="Prints the version, whether CUDA is built and usable, and the devices.")
    return p


def _version() -> str:
    from . import __version__
    return __version__


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        run_demo(device=args.device, size=args.size, json_path=args.json)
        return 0
    if args.command == "info":
        import mambatron as mt
        print(f"mambatron {mt.__version__}")
        print(f"built with CUDA: {mt.built_with_cuda()}")
        print(f"CUDA devices usable: {mt.device_count()}")
        return 0
    parser.print_help(sys.stderr)
    return 2
