"""Tokenizers for data preparation: a built-in byte-level one and adapters for
Hugging Face ``tokenizers`` (tokenizer.json) and ``sentencepiece`` (.model) files.

Every tokenizer has ``name``, ``vocab_size``, ``eod_id``, ``encode(text)`` (a list or numpy
array of ids) and ``decode(ids) -> str``.

The byte tokenizer: the UTF-8 bytes of the text are the ids, so ``vocab_size`` is 256
and the tiny presets (vocabulary 256) can train on it. Its end-of-document id is 0, the
NUL byte: text hardly ever holds NUL, and keeping the EOD inside the 256 ids is what lets
a 256-entry embedding cover it. NUL bytes in the input text are therefore removed by
``encode``, so that id 0 always means a document boundary.
"""
from __future__ import annotations

import os

_EOD_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; id 0 (NUL) is the end-of-document token."""

    name = "byte"
    vocab_size = 256
    eod_id = 0

    def encode(self, text: str):
        import numpy as np

        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return ids[ids != 0]

    def decode(self, ids, skip_special: bool = True, eod_text: str = "<|eod|>") -> str:
        """Text for ids; an EOD is dropped, or written as ``eod_text`` when skip_special is False."""
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < 256:
                raise ValueError(f"ByteTokenizer.decode: id {i} is outside the byte vocabulary [0, 256)")
            if i == self.eod_id:
                out.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
                if not skip_special:
                    out.append(eod_text)
            else:
                run.append(i)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


def _require(package: str, what: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"{what} needs the '{package}' package, which is not installed "
                          f"(pip install {package})") from e


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer.json. The EOD is ``eod_token`` when given, else
    the first of <|endoftext|>, </s>, <|end_of_text|>, <eos>, <|eos|>, [SEP] in the vocabulary."""

    def __init__(self, path: str, eod_token: str | None = None):
        tk = _require("tokenizers", f"the tokenizer {path}")
        self.path = path
        self.name = path
        self._tok = tk.Tokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        names = (eod_token,) if eod_token else _EOD_NAMES
        ids = [self._tok.token_to_id(n) for n in names]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(f"{path}: no end-of-document token: none of {', '.join(names)} is in the vocabulary")
        self.eod_id = found[0]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


class SentencePieceTokenizer:
    """A sentencepiece .model; the EOD is its eos id."""

    def __init__(self, path: str):
        spm = _require("sentencepiece", f"the tokenizer {path}")
        self.path = path
        self.name = path
        self._sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._sp.get_piece_size()
        self.eod_id = self._sp.eos_id()
        if self.eod_id < 0:
            raise ValueError(f"{path}: the sentencepiece model defines no eos id to end documents with")

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._sp.decode([int(i) for i in ids])


def load_tokenizer(spec="byte"):
    """'byte', a tokenizer.json, a sentencepiece .model, or a folder holding either
    (tokenizer.json first); a tokenizer object is returned as is."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    spec = os.fspath(spec)
    if spec == "byte":
        return ByteTokenizer()
    if os.path.isdir(spec):
        for name, cls in (("tokenizer.json", HFTokenizer), ("tokenizer.model", SentencePieceTokenizer)):
            if os.path.exists(os.path.join(spec, name)):
                return cls(os.path.join(spec, name))
        raise ValueError(f"{spec}: the folder holds neither tokenizer.json nor tokenizer.model")
    if not os.path.exists(spec):
        raise ValueError(f"tokenizer {spec!r}: no such file; expected 'byte', a tokenizer.json, "
                         f"a sentencepiece .model, or a folder holding one")
    if spec.endswith(".json"):
        return HFTokenizer(spec)
    if spec.endswith(".model"):
        return SentencePieceTokenizer(spec)
    raise ValueError(f"tokenizer {spec!r}: expected a .json (Hugging Face tokenizers) or a .model (sentencepiece) file")
