"""Text generation: a thin Python face on the native ``TokenGenerator`` (generate.h).

Prompts of different lengths are batched exactly: each prompt is prefilled on its own
and then decoded with the others, so every sequence gets the tokens it would get alone.
Sampling is greedy (``temperature=0``) or temperature / top-k / top-p; each sequence
draws from its own counter-based stream, so a seed always gives the same tokens.

``generate(model, prompts, ...)`` returns the generated ids (or text with a tokenizer);
with ``stream=True`` it yields them as each decode round produces them. A
:class:`Generator` keeps the native generator for repeated calls.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Union

from . import _C

Prompt = Union[str, Sequence[int]]


def _is_ids(x: Any) -> bool:
    """One prompt given as ids: a sequence of integers (list, tuple, 1-D array)."""
    if isinstance(x, (str, bytes)):
        return False
    if hasattr(x, "ndim"):
        return x.ndim == 1
    try:
        return len(x) > 0 and all(isinstance(t, int) or hasattr(t, "__index__") for t in x)
    except TypeError:
        return False


def _per_sequence(value: Any, b: int, name: str, is_one) -> list:
    """``value`` for every sequence: one shared value, or a list of b values."""
    if is_one(value):
        return [value] * b
    values = list(value)
    if len(values) != b:
        raise ValueError(f"{name}: {len(values)} values for {b} prompts; give one value or one per prompt")
    return values


class _TextStream:
    """Decodes one sequence incrementally: yields only text that is complete, holding
    back a trailing partial character (a multi-byte UTF-8 character split over tokens)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def push(self, token: Optional[int]) -> str:
        if token is not None:
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if token is not None and text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece


class Generator:
    """Generation on one model, reusable across calls.

    ``tokenizer``: None (prompts and outputs are ids), ``"byte"``, a tokenizer file or
    folder, or a tokenizer object (``encode``/``decode``/``eod_id``); with one, string
    prompts are encoded, outputs are decoded text, and generation stops at the
    tokenizer's end-of-document id unless ``stop_tokens`` says otherwise.
    """

    def __init__(self, model, tokenizer=None) -> None:
        self.model = model
        self._native = _C.TokenGenerator(model)
        if tokenizer is not None:
            from .tokenizers import load_tokenizer
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._single = False

    # ---- the native state --------------------------------------------------------------
    @property
    def tokens(self) -> List[List[int]]:
        """Generated ids of each sequence so far (prompts excluded)."""
        return [list(t) for t in self._native.tokens]

    @property
    def logits(self):
        """[b, V]: the logits the next round draws from."""
        return self._native.logits

    @property
    def state(self):
        """The batch's InferenceState (conv/SSM states and KV caches)."""
        return self._native.state

    @property
    def done(self) -> bool:
        return self._native.done

    # ---- generation ------------------------------------------------------------------
    def start(self, prompts, max_new_tokens: Union[int, Sequence[int]] = 32, *, temperature: float = 1.0,
              top_k: int = 0, top_p: float = 1.0, seed: Union[int, Sequence[int]] = 0,
              stop_tokens: Union[None, int, Sequence[int], Sequence[Sequence[int]]] = None) -> None:
        """Starts a batch (see :func:`generate` for the arguments); then call :meth:`next`."""
        self._single = isinstance(prompts, str) or _is_ids(prompts)
        batch = [prompts] if self._single else list(prompts)
        if not batch:
            raise ValueError("generate: no prompts")
        ids = [self._encode(p, i) for i, p in enumerate(batch)]
        b = len(ids)
        budgets = [int(n) for n in _per_sequence(max_new_tokens, b, "max_new_tokens", lambda v: isinstance(v, int))]
        seeds = ([_C.sequence_seed(int(seed), i) for i in range(b)] if isinstance(seed, int)
                 else [int(s) for s in _per_sequence(seed, b, "seed", lambda v: False)])
        if stop_tokens is None:
            stop_tokens = [self.tokenizer.eod_id] if self.tokenizer is not None else []
        if isinstance(stop_tokens, int):
            stops = [[stop_tokens]] * b
        elif all(isinstance(s, int) for s in stop_tokens):
            stops = [[int(s) for s in stop_tokens]] * b
        else:
            stops = [[int(s) for s in row] for row in _per_sequence(stop_tokens, b, "stop_tokens", lambda v: False)]
        self._native.start(ids, budgets, stops, seeds, temperature=float(temperature), top_k=int(top_k),
                           top_p=float(top_p))

    def next(self) -> List[Optional[int]]:
        """One decode round: the new id of every sequence, None for finished ones."""
        return [None if t < 0 else t for t in self._native.next()]

    def stream(self, prompts, max_new_tokens=32, **kwargs) -> Iterator[Any]:
        """Yields each round's output: for one prompt its new id (or text piece), for a
        batch a list with one entry per sequence (None where nothing new)."""
        self.start(prompts, max_new_tokens, **kwargs)
        texts = [_TextStream(self.tokenizer) for _ in range(self._native.batch)] if self.tokenizer else None
        while not self._native.done:
            out = self.next()
            if texts is not None:
                out = [s.push(t) if t is not None else None for s, t in zip(texts, out)]
            if self._single:
                if out[0] is not None and out[0] != "":
                    yield out[0]
            else:
                yield out
        if texts is not None:  # whatever a held-back partial character left
            rest = [s.push(None) for s in texts]
            if self._single and rest[0]:
                yield rest[0]
            elif not self._single and any(rest):
                yield [r or None for r in rest]

    def generate(self, prompts, max_new_tokens=32, *, stream: bool = False, **kwargs):
        """The generated ids (or text) of each prompt; a generator of pieces when ``stream``."""
        if stream:
            return self.stream(prompts, max_new_tokens, **kwargs)
        self.start(prompts, max_new_tokens, **kwargs)
        while not self._native.done:
            self._native.next()
        out = self.tokens
        if self.tokenizer is not None:
            out = [self.tokenizer.decode(t) for t in out]
        return out[0] if self._single else out

    def _encode(self, prompt, i: int) -> List[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"generate: prompt {i} is text; pass tokenizer= (e.g. 'byte') or give token ids")
            return [int(t) for t in self.tokenizer.encode(prompt)]
        if not _is_ids(prompt):
            raise ValueError(f"generate: prompt {i} must be text or a non-empty sequence of token ids")
        return [int(t) for t in prompt]


def generate(model, prompts, max_new_tokens: Union[int, Sequence[int]] = 32, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: Union[int, Sequence[int]] = 0,
             stop_tokens=None, tokenizer=None, stream: bool = False):
    """Generates continuations of ``prompts`` with ``model``.

    prompts: one prompt (a list of ids, or text with a tokenizer) or a list of them, of any
    lengths. max_new_tokens: one budget or one per prompt. temperature 0 is greedy;
    top_k 0 and top_p 1 switch those filters off. seed: one int (sequence i draws from
    ``sequence_seed(seed, i)``) or one seed per prompt. stop_tokens: an id, a list of ids
    for all prompts, or one list per prompt; a sequence ends after producing one (it is
    kept). Returns a list of ids (or a string) for one prompt, a list of them for a
    batch; with ``stream=True`` yields them round by round (see :meth:`Generator.stream`).
    """
    return Generator(model, tokenizer).generate(prompts, max_new_tokens, stream=stream, temperature=temperature,
                                                top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens)


def sampling_probabilities(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The distribution the sampler draws from, as float64 (zero outside the kept ids)."""
    return _C.sampling_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)


def sample_tokens(logits, seeds: Sequence[int], counters: Sequence[int], temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0):
    """One id per row of logits [b, V]; row i draws with ``sampling_uniform(seeds[i], counters[i])``."""
    return _C.sample_tokens(logits, list(seeds), list(counters), temperature=temperature, top_k=top_k, top_p=top_p)


sequence_seed = _C.sequence_seed
sampling_uniform = _C.sampling_uniform
