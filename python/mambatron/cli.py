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

    i = sub.add_parser("info", help="what this build has, or the size of a model",
                       description="Without PRESET_OR_CONFIG: prints the version, whether CUDA is built and "
                                   "usable, and the devices. With it: prints the model's layer pattern, layer "
                                   "counts, parameters by sublayer kind, and the memory needed to train it "
                                   "(AdamW, mixed precision) and to run it, computed without allocating.")
    i.add_argument("target", nargs="?", default=None, metavar="PRESET_OR_CONFIG",
                   help="a preset name (e.g. hybrid-8b, tiny-hybrid), a config JSON file, or a folder "
                        "holding config.json")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field, dotted (mamba2.d_state=64) or flat when unambiguous "
                        "(d_model=2048); repeatable")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.add_argument("--batch", type=int, default=1, help="sequences for the memory estimate (default: 1)")
    i.add_argument("--seq-len", type=int, default=4096,
                   help="tokens per training sequence and inference context length (default: 4096)")
    return p


_KIND_LABELS = {"mamba2": "Mamba-2", "mamba1": "Mamba-1", "attention": "attention", "mlp": "MLP"}


def _short_count(n: int) -> str:
    """A parameter count in words: 8.65 B, 129.0 M, 650.2 K."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'B' else 1}f} {unit}"
    return str(n)


def _short_bytes(n: int) -> str:
    """Bytes in GiB, or in MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _model_info(args) -> int:
    """``mambatron info PRESET_OR_CONFIG``: sizes of a model, printed as text or JSON."""
    import json
    import os

    from .config import ModelConfig
    from .pattern import compact_pattern, layer_counts
    from .presets import get_preset

    try:
        if os.path.exists(args.target):
            cfg = ModelConfig.load(args.target)
        else:
            cfg = get_preset(args.target)
        cfg = cfg.override(*args.set)
        params = cfg.parameter_count()
        memory = cfg.memory_estimate(args.batch, args.seq_len)
    except (ValueError, OSError) as e:
        print(f"mambatron info: error: {e}", file=sys.stderr)
        return 2
    counts = layer_counts(cfg.layers)
    if args.json:
        print(json.dumps({"name": cfg.name, "pattern": cfg.layers, "layer_counts": counts,
                          "parameters": params, "memory_bytes": memory, "config": cfg.to_dict()}, indent=2))
        return 0
    print(f"{cfg.name or args.target}: {len(cfg.layers)} sublayers, d_model {cfg.d_model}, vocab {cfg.vocab_size}"
          f"{', tied embeddings' if cfg.tie_embeddings else ''}")
    print(f"pattern     {compact_pattern(cfg.layers)}")
    print("layers      " + ", ".join(f"{_KIND_LABELS[k]} {n}" for k, n in counts.items() if n))
    print(f"parameters  {params['total']:,} ({_short_count(params['total'])})")
    for part, n in params.items():
        if part != "total" and (n or part not in _KIND_LABELS):
            label = _KIND_LABELS.get(part, part.replace("_", " "))
            print(f"  {label:<12}{n:>16,}")
    for phase, what in (("training", f"batch {args.batch} x {args.seq_len} tokens, AdamW, {cfg.dtype} compute, "
                                     f"{cfg.param_dtype} master weights"),
                        ("inference", f"batch {args.batch}, context {args.seq_len} tokens, {cfg.dtype} weights")):
        print(f"{phase} memory ({what})")
        for part, n in memory[phase].items():
            print(f"  {part.replace('_', ' '):<16}{_short_bytes(n):>12}")
    return 0


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
    if args.command == "info" and args.target is not None:
        return _model_info(args)
    if args.command == "info":
        if args.set or args.json:
            parser.error("info: --set and --json need PRESET_OR_CONFIG")
        import mambatron as mt
        print(f"mambatron {mt.__version__}")
        print(f"built with CUDA: {mt.built_with_cuda()}")
        print(f"CUDA devices usable: {mt.device_count()}")
        return 0
    parser.print_help(sys.stderr)
    return 2
