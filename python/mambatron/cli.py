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
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_eval_parser(sub)
    return p


def _add_train_parser(sub) -> None:
    """``mambatron train``: options map one to one onto :class:`mambatron.train.TrainArgs`."""
    from .train import TrainArgs

    d = TrainArgs()
    t = sub.add_parser("train", help="train a model (default: tiny-hybrid on the Python standard library's sources)",
                       description="Trains a model with AdamW, gradient accumulation, clipping and an LR schedule, "
                                   "showing progress, logging every step to metrics.jsonl/.csv (and TensorBoard "
                                   "when installed), evaluating on held-out documents, saving checkpoints "
                                   "(config.json, model.safetensors, optimizer.safetensors, trainer_state.json) "
                                   "that resume bitwise, plotting loss.png and printing a generated sample. With "
                                   "no arguments: the tiny-hybrid preset on the Python standard library's .py "
                                   "files, byte-tokenized, in a few minutes on a CPU.")
    t.add_argument("model", nargs="?", default=d.model, metavar="PRESET_OR_CONFIG",
                   help=f"a preset name, a config JSON or TOML file, or a folder holding config.json (default: {d.model})")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field, dotted (mamba2.d_state=64) or flat when unambiguous; repeatable")
    t.add_argument("--data", default=None, metavar="PREFIX",
                   help="a Megatron dataset PREFIX (.bin/.idx, see 'mambatron data prepare'); default: the Python "
                        "standard library's sources, prepared once under OUT/data")
    t.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                   help="the documents already end with the EOD token (data prepared with --append-eod)")
    t.add_argument("--eod-id", type=int, default=d.eod_id, help=f"end-of-document id (default: {d.eod_id})")
    ints = [("seq-len", "tokens per training sequence"), ("micro-batch", "sequences per forward/backward"),
            ("grad-accum", "micro-batches per optimizer step"), ("steps", "optimizer steps in all"),
            ("eval-every", "steps between held-out evaluations (0: only at the end)"),
            ("eval-batches", "micro-batches per held-out evaluation"),
            ("save-every", "steps between checkpoints (0: only at the end)"),
            ("keep-last", "checkpoints kept (0: all)"), ("seed", "seed of the initialisation and the data order"),
            ("sample-tokens", "tokens of the closing sample (0: none)")]
    for name, what in ints:
        t.add_argument(f"--{name}", type=int, default=getattr(d, name.replace("-", "_")),
                       help=f"{what} (default: {getattr(d, name.replace('-', '_'))})")
    t.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: steps / 20, at most 100)")
    t.add_argument("--decay-steps", type=int, default=None, help="step where the decay ends (default: --steps)")
    t.add_argument("--wsd-decay-steps", type=int, default=None,
                   help="length of the WSD decay phase (default: a fifth of the decay steps)")
    floats = [("lr", "peak learning rate"), ("min-lr", "final learning rate of the decay"),
              ("clip", "gradient clipping by global L2 norm (0: off)"),
              ("weight-decay", "AdamW weight decay on matrices"), ("beta1", "AdamW beta1"), ("beta2", "AdamW beta2"),
              ("eps", "AdamW epsilon"), ("eval-fraction", "share of the documents held out for evaluation")]
    for name, what in floats:
        t.add_argument(f"--{name}", type=float, default=getattr(d, name.replace("-", "_")),
                       help=f"{what} (default: {getattr(d, name.replace('-', '_'))})")
    t.add_argument("--schedule", choices=["constant", "cosine", "wsd"], default=d.schedule,
                   help=f"LR after warmup: constant, cosine to --min-lr, or wsd (constant, then a decay phase) "
                        f"(default: {d.schedule})")
    t.add_argument("--wsd-decay", choices=["linear", "cosine"], default=d.wsd_decay,
                   help=f"shape of the WSD decay phase (default: {d.wsd_decay})")
    t.add_argument("--no-seq-idx", dest="use_seq_idx", action="store_false",
                   help="let packed documents see each other (default: each document starts fresh)")
    t.add_argument("--recompute", action="store_true",
                   help="recompute each sublayer's forward before its backward: activations of one sublayer "
                        "are kept instead of all (less memory, about one more forward; the same results)")
    t.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/NAME)")
    t.add_argument("--resume", default=None, metavar="DIR|auto",
                   help="continue from the latest complete checkpoint of DIR (a run folder or a checkpoint), or "
                        "'auto' for the run folder's own; the trajectory's settings come from the checkpoint")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N] (default: auto, the best found)")
    t.add_argument("--dtype", default=d.dtype, help="compute dtype: auto (bf16 mixed precision on CUDA, f32 on the "
                   "CPU), f32, f64 (CPU) or bf16 (CUDA) (default: auto)")
    t.add_argument("--log", default=",".join(d.log), metavar="FORMATS",
                   help="comma-separated log formats: jsonl, csv, tensorboard (when installed) "
                        f"(default: {','.join(d.log)})")
    t.add_argument("--prompt", default=d.prompt, help=f"prompt of the closing sample (default: {d.prompt!r})")
    t.add_argument("--no-plot", dest="plot", action="store_false", help="do not write loss.png")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")


def _train(args) -> int:
    """``mambatron train``."""
    import dataclasses
    import json

    from .train import TrainArgs, format_summary, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields}
    kwargs["log"] = [x.strip() for x in args.log.split(",") if x.strip()]
    try:
        summary = train(TrainArgs(**kwargs))
    except (ValueError, OSError) as e:
        print(f"mambatron train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


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


def _add_generate_parser(sub) -> None:
    """``mambatron generate``."""
    g = sub.add_parser("generate", help="continue a prompt with a trained model, streaming text",
                       description="Loads a checkpoint folder (config.json and model.safetensors, as training "
                                   "writes them, or a Hugging Face mamba/mamba2 folder) and streams the "
                                   "continuation of --prompt to stdout, after the prompt. Stops at the "
                                   "tokenizer's end-of-document token or after --max-new-tokens.")
    g.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a folder holding config.json and model.safetensors")
    g.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default: 64)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature; 0 is greedy (default: 1.0)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens; 0 keeps all "
                                                                     "(default: 0)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="keep the smallest set of most likely tokens with probability >= P (default: 1.0)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampling (default: 0)")
    g.add_argument("--tokenizer", default=None, metavar="byte|PATH",
                   help="'byte', a tokenizer.json, a sentencepiece .model, or a folder holding one (default: the "
                        "checkpoint folder's tokenizer if it has one, else byte)")
    g.add_argument("--device", default="auto", help="auto (the best found), cpu or cuda[:N] (default: auto)")
    g.add_argument("--dtype", default="auto",
                   help="auto (bf16 on CUDA, f32 on the CPU), f32, f64 (CPU) or bf16 (CUDA) (default: auto)")


def _load_on_device(path: str, device: str, dtype: str):
    """A checkpoint's model on `device` ("auto": the best found) in `dtype` ("auto": bf16 on CUDA, f32 on the CPU)."""
    from . import best_device
    from .hf import load_model
    from .train import compute_dtype

    device = best_device() if device == "auto" else device
    return load_model(path, dtype=compute_dtype(dtype, device), device=device)


def _generate(args) -> int:
    """``mambatron generate``: the prompt, then the continuation as it is produced."""
    import os

    from .generate import Generator
    from .tokenizers import load_tokenizer

    try:
        tok = args.tokenizer
        if tok is None:
            has = any(os.path.exists(os.path.join(args.checkpoint, f)) for f in ("tokenizer.json", "tokenizer.model"))
            tok = args.checkpoint if has else "byte"
        gen = Generator(_load_on_device(args.checkpoint, args.device, args.dtype), tokenizer=load_tokenizer(tok))
        pieces = gen.stream(args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
        sys.stdout.write(args.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except (ValueError, ImportError, OSError, RuntimeError) as e:
        print(f"\nmambatron generate: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0


def _add_eval_parser(sub) -> None:
    """``mambatron eval``."""
    from .eval.tasks import TASKS

    e = sub.add_parser("eval", help="accuracy on a synthetic task, or perplexity on a dataset",
                       description="TASK (phonebook, mqar, selective_copy, passkey): greedy answers to N seeded "
                                   "examples, scored by exact match, at each --lengths prompt length when given. "
                                   "perplexity: nats/token, bits/byte and perplexity on --data (its held-out "
                                   "split with --eval-fraction).")
    e.add_argument("task", choices=sorted(TASKS) + ["perplexity"], metavar="TASK",
                   help=f"{', '.join(sorted(TASKS))} or perplexity")
    e.add_argument("--model", required=True, metavar="PATH",
                   help="a checkpoint folder, a training run's folder, or a Hugging Face mamba/mamba2 folder")
    e.add_argument("--n", type=int, default=100, help="examples per length (default: 100)")
    e.add_argument("--seed", type=int, default=0, help="seed of the examples (default: 0)")
    e.add_argument("--lengths", type=int, nargs="+", default=None, metavar="L",
                   help="prompt lengths in tokens, one evaluation each (phonebook, selective_copy, passkey)")
    e.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                   help="a task size, e.g. pairs=32 or digits=5; repeatable")
    e.add_argument("--batch-size", type=int, default=16, help="prompts or samples per batch (default: 16)")
    e.add_argument("--data", default=None, metavar="PREFIX", help="perplexity: the dataset (PREFIX.bin/.idx)")
    e.add_argument("--seq-len", type=int, default=512, help="perplexity: tokens per sample (default: 512)")
    e.add_argument("--batches", type=int, default=16, help="perplexity: batches to read (default: 16)")
    e.add_argument("--eval-fraction", type=float, default=0.0,
                   help="perplexity: read the last fraction of the documents, as training holds out (default: 0)")
    e.add_argument("--tokenizer", default="byte", metavar="byte|PATH",
                   help="perplexity: the tokenizer, for bits per byte (default: byte)")
    e.add_argument("--device", default="auto", help="auto (the best found), cpu or cuda[:N] (default: auto)")
    e.add_argument("--dtype", default="auto",
                   help="auto (bf16 on CUDA, f32 on the CPU), f32, f64 (CPU) or bf16 (CUDA) (default: auto)")
    e.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON to OUT")
    e.add_argument("--plot", default=None, metavar="PNG",
                   help="with --lengths: plot accuracy against length to PNG (needs matplotlib)")


def _eval(args) -> int:
    """``mambatron eval``: one line per length (or the perplexity), then the JSON file."""
    import json

    from .eval import evaluate_task, perplexity, plot_accuracy, save_json

    try:
        size = {}
        for item in args.size:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--size {item!r}: expected KEY=VALUE")
            size[key.strip()] = json.loads(value) if value.strip() not in ("None", "none") else None
        model = _load_on_device(args.model, args.device, args.dtype)
        if args.task == "perplexity":
            if args.data is None:
                raise ValueError("perplexity needs --data PREFIX")
            res = perplexity(model, args.data, args.seq_len, args.batches, args.eval_fraction,
                             batch_size=args.batch_size, tokenizer=args.tokenizer)
            bpb = f", {res['bits_per_byte']:.4f} bits/byte" if res["bits_per_byte"] is not None else ""
            print(f"{res['tokens']:,} tokens: {res['nats_per_token']:.4f} nats/token{bpb}, "
                  f"perplexity {res['perplexity']:.3f}")
        else:
            res = evaluate_task(model, args.task, args.n, args.seed, lengths=args.lengths,
                                batch_size=args.batch_size, **size)
            for run in res.get("by_length", [res]):
                print(f"{res['task']}: length {run['mean_length']:.0f} tokens (max {run['max_length']}): accuracy "
                      f"{run['accuracy']:.3f} over {run['n']} (chance {run['chance']:.3g})")
            if args.plot and args.lengths and plot_accuracy({args.model: res}, args.plot) is None:
                print("no plot: matplotlib is not installed", file=sys.stderr)
    except (ValueError, ImportError, OSError, RuntimeError, TypeError) as e:
        print(f"mambatron eval: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        save_json(res, args.json)
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
    if args.command == "generate":
        return _generate(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "data":
        return _data(args)
    if args.command == "train":
        return _train(args)
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
