"""Training data: turning text into Megatron indexed datasets, and reading them back.

``prepare`` reads its inputs in the order given (a folder: its ``*.txt``, ``*.text``,
``*.md`` and ``*.jsonl`` files, recursively, in sorted path order) and writes one
document per text file and one per JSONL line (the ``jsonl_key`` field, "text" by
default). With ``append_eod`` each document ends with the tokenizer's end-of-document
id in the files; then train with ``DataLoader(..., append_eod=False)``, since the
loader otherwise adds the EOD itself. Token ids are stored as uint16 when the
vocabulary is below 65500, else int32 (Megatron's rule).

The native classes are re-exported here: ``IndexedDataset`` (memory-mapped reader),
``IndexedDatasetWriter`` and ``DataLoader``.
"""
from __future__ import annotations

import json
import os
import sys
import time

from ._C import DataLoader, IndexedDataset, IndexedDatasetWriter, token_code_for_vocab, token_code_name  # noqa: F401
from .tokenizers import load_tokenizer

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)


def input_files(inputs) -> list[str]:
    """The files that ``inputs`` (files and folders) stand for, in order."""
    files = []
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = []
            for root, dirs, names in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, n) for n in names if n.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)]
            files += sorted(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise ValueError(f"input {item!r}: no such file or folder")
    if not files:
        raise ValueError(f"no input files found in {', '.join(map(str, [inputs] if isinstance(inputs, str) else inputs))}"
                         f" (folders are searched for {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})")
    return files


def iter_documents(files, jsonl_key: str = "text"):
    """Yields the text of each document: a whole text file, or one JSONL line's field."""
    for path in files:
        if path.endswith(JSONL_SUFFIXES):
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: invalid JSON: {e.msg}") from None
                    if not isinstance(record, dict) or jsonl_key not in record:
                        raise ValueError(f"{path}:{n}: no {jsonl_key!r} field in the record "
                                         f"(choose another with --jsonl-key)")
                    if not isinstance(record[jsonl_key], str):
                        raise ValueError(f"{path}:{n}: the {jsonl_key!r} field is a "
                                         f"{type(record[jsonl_key]).__name__}, expected a string")
                    yield record[jsonl_key]
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()


class _Progress:
    """tqdm when installed, else a counter on stderr redrawn at most twice a second."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.last = enabled, None, 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(unit=" docs", desc="tokenizing", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, docs: int, tokens: int, start: float, final: bool = False):
        if not self.enabled:
            return
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        if self.bar is not None:
            if not final:
                self.bar.update(1)
            self.bar.set_postfix_str(f"{tokens:,} tokens, {rate:,.0f} tok/s", refresh=final)
        elif final or time.perf_counter() - self.last > 0.5:
            self.last = time.perf_counter()
            print(f"\rtokenizing: {docs:,} documents, {tokens:,} tokens, {rate:,.0f} tok/s",
                  end="\n" if final else "", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def prepare(inputs, output: str, tokenizer="byte", jsonl_key: str = "text", append_eod: bool = False,
            dtype_code: int | None = None, progress: bool = True) -> dict:
    """Tokenizes ``inputs`` into OUTPUT.bin and OUTPUT.idx; returns a summary
    (documents, tokens, dtype, bytes, ...)."""
    tok = load_tokenizer(tokenizer)
    files = input_files(inputs)
    code = dtype_code if dtype_code is not None else token_code_for_vocab(tok.vocab_size)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    bar = _Progress(progress)
    with IndexedDatasetWriter(output, code) as w:
        try:
            for text in iter_documents(files, jsonl_key):
                ids = tok.encode(text)
                if append_eod:
                    ids = list(ids) + [tok.eod_id]
                w.add_document(ids)
                bar.update(w.num_documents, w.num_tokens, start)
            bar.update(w.num_documents, w.num_tokens, start, final=True)
        finally:
            bar.close()
        docs, tokens = w.num_documents, w.num_tokens
    seconds = time.perf_counter() - start
    nbytes = os.path.getsize(output + ".bin") + os.path.getsize(output + ".idx")
    return {"output": output, "files": len(files), "documents": docs, "tokens": tokens,
            "dtype": token_code_name(code), "bytes": nbytes, "tokenizer": tok.name,
            "vocab_size": tok.vocab_size, "eod_id": tok.eod_id, "append_eod": append_eod, "seconds": seconds}


def info(prefix: str, tokenizer="byte", decode_tokens: int = 200) -> dict:
    """Counts, document lengths and the decoded start of the first document of a dataset."""
    ds = IndexedDataset(prefix)
    starts = ds.token_offsets()  # tokens before each sequence, and the total
    doc_index = ds.document_index()
    lengths = (starts[doc_index[1:]] - starts[doc_index[:-1]]).tolist()
    nbytes = os.path.getsize(prefix + ".bin") + os.path.getsize(prefix + ".idx")
    out = {"prefix": prefix, "sequences": ds.num_sequences, "documents": ds.num_documents,
           "tokens": ds.num_tokens, "dtype": ds.dtype, "bytes": nbytes,
           "document_tokens": {"min": min(lengths, default=0), "mean": sum(lengths) / max(len(lengths), 1),
                               "max": max(lengths, default=0)}}
    ids = []
    for s in range(ds.num_sequences):
        if len(ids) >= decode_tokens:
            break
        ids += ds.read(s, 0, min(ds.sequence_length(s), decode_tokens - len(ids))).tolist()
    out["sample_ids"] = ids
    tok = load_tokenizer(tokenizer)
    if ids and max(ids) >= tok.vocab_size:
        out["sample_text"] = None  # ids beyond this tokenizer: another tokenizer made the data
    else:
        out["sample_text"] = tok.decode(ids, skip_special=False) if ids else ""
    return out
