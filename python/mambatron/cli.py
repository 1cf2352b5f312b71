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

    data = sub.add_parser("data", help="prepare and inspect training data (Megatron indexed datasets)",
                          description="Tokenizes text into Megatron indexed datasets (PREFIX.bin + PREFIX.idx) "
                                      "and inspects them.")
    data.set_defaults(data_parser=data)
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dp = data_sub.add_parser("prepare", help="tokenize text files, folders and JSONL files into a dataset",
                             description="Writes PREFIX.bin and PREFIX.idx. A text file is one document; a JSONL "
                                         "file holds one document per line; a folder stands for its .txt, .text, "
                                         ".md and .jsonl files, recursively, in sorted order. Tokens are uint16 "
                                         "when the vocabulary is below 65500, else int32.")
    dp.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, JSONL files or folders")
    dp.add_argument("--output", "-o", required=True, metavar="PREFIX",
                    help="where to write PREFIX.bin and PREFIX.idx")
    dp.add_argument("--tokenizer", default="byte", metavar="byte|PATH",
                    help="'byte' (UTF-8 bytes, vocabulary 256, end of document = byte 0), a Hugging Face "
                         "tokenizer.json, a sentencepiece .model, or a folder holding one (default: byte)")
    dp.add_argument("--jsonl-key", default="text", metavar="KEY",
                    help="the field of each JSONL record that holds the text (default: text)")
    dp.add_argument("--append-eod", action="store_true",
                    help="end every document with the tokenizer's end-of-document id in the files (then train "
                         "with the loader's append_eod off)")
    dp.add_argument("--no-progress", action="store_true", help="no progress bar")
    dp.add_argument("--json", action="store_true", help="print the summary as JSON")
    di = data_sub.add_parser("info", help="counts, document lengths and a decoded sample of a dataset",
                             description="Prints the sequence, document and token counts, the token dtype, the "
                                         "size on disk, document lengths, and the start of the first document "
                                         "decoded.")
    di.add_argument("prefix", metavar="PREFIX", help="the dataset (PREFIX.bin and PREFIX.idx)")
    di.add_argument("--tokenizer", default="byte", metavar="byte|PATH",
                    help="the tokenizer to decode the sample with (default: byte)")
    di.add_argument("--tokens", type=int, default=200, help="tokens of the sample to decode (default: 200)")
    di.add_argument("--json", action="store_true", help="print the result as JSON")
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


def _data_bytes(n: int) -> str:
    """A dataset's size: bytes below one MiB, else as _short_bytes."""
    return f"{n:,} bytes" if n < 2**20 else _short_bytes(n)


def _data(args) -> int:
    """``mambatron data prepare|info``."""
    import json

    from . import data

    if args.data_command is None:
        args.data_parser.print_help(sys.stderr)
        return 2
    try:
        if args.data_command == "prepare":
            res = data.prepare(args.inputs, args.output, tokenizer=args.tokenizer, jsonl_key=args.jsonl_key,
                               append_eod=args.append_eod, progress=not args.no_progress)
        else:
            res = data.info(args.prefix, tokenizer=args.tokenizer, decode_tokens=args.tokens)
    except (ValueError, ImportError, OSError, RuntimeError) as e:
        print(f"mambatron data {args.data_command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    elif args.data_command == "prepare":
        print(f"wrote {res['output']}.bin and .idx: {res['documents']:,} documents from {res['files']} files, "
              f"{res['tokens']:,} tokens ({res['dtype']}), {_data_bytes(res['bytes'])}, "
              f"tokenizer {res['tokenizer']} (vocabulary {res['vocab_size']}, EOD {res['eod_id']}"
              f"{', appended' if res['append_eod'] else ''}), {res['seconds']:.1f} s")
    else:
        lengths = res["document_tokens"]
        print(f"{res['prefix']}: {res['documents']:,} documents, {res['sequences']:,} sequences, "
              f"{res['tokens']:,} tokens ({res['dtype']}), {_data_bytes(res['bytes'])}")
        print(f"document tokens: min {lengths['min']:,}, mean {lengths['mean']:,.1f}, max {lengths['max']:,}")
        if res["sample_text"] is None:
            print(f"first {len(res['sample_ids'])} ids: {res['sample_ids']}")
        else:
            print(f"first {len(res['sample_ids'])} tokens decoded:\n{res['sample_text']}")
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
    if args.command == "data":
        return _data(args)
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
