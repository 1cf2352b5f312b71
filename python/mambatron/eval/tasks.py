"""Synthetic recall tasks, generated from a seed (MODELS.md §4).

Every task writes plain ASCII text, so the byte tokenizer's ids are the text's bytes.
A task draws one example as a list of *pieces* ``(text, is_answer)``; the last piece is
the answer the model is asked for, earlier answer pieces (worked examples, earlier
queries) are part of the prompt. From the pieces come

* :meth:`Task.make_examples` — prompts and answers for evaluation (:class:`Example`);
* :meth:`Task.training_batches` — token arrays [b, l+1] with a loss mask over the
  targets that are answer tokens (all answer pieces), for training tiny models.

Tasks: ``phonebook`` (look up a name's number), ``mqar`` (multi-query associative
recall), ``selective_copy`` (copy the scattered symbols, in order), ``passkey`` (find a
number hidden in filler text). :func:`get_task` returns one by name.
"""
from __future__ import annotations

import abc
import dataclasses
import string
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

Pieces = List[Tuple[str, bool]]


def _ids(text: str) -> np.ndarray:
    """The byte tokenizer's ids of ASCII text (int32)."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int32)


@dataclasses.dataclass
class Example:
    """One evaluation example: ``prompt`` and the expected ``answer``, as text and as
    byte-tokenizer ids; ``length`` is the prompt's length in tokens; ``chance`` is the
    probability that a uniformly random guess (:meth:`Task.random_guess`) is right."""

    prompt: str
    answer: str
    prompt_ids: np.ndarray
    answer_ids: np.ndarray
    chance: float
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.prompt_ids.size)


class Task(abc.ABC):
    """A synthetic task; subclasses define :meth:`sample` and :meth:`random_guess`."""

    name = ""
    defaults: Dict[str, Any] = {}

    def sizes(self, size: Dict[str, Any]) -> Dict[str, Any]:
        unknown = set(size) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown size argument(s) {sorted(unknown)}; "
                             f"expected some of {sorted(self.defaults)}")
        return {**self.defaults, **size}

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, **size) -> Tuple[Pieces, Dict[str, Any]]:
        """One example's pieces (the last is the asked answer) and its info (``chance``, ...)."""

    @abc.abstractmethod
    def random_guess(self, example: Example, rng: np.random.Generator) -> str:
        """A uniformly random answer from the answer space the ``chance`` refers to."""

    # ---- shared -------------------------------------------------------------------------
    def make_examples(self, n: int, seed: int = 0, **size) -> List[Example]:
        """``n`` examples; the same seed and sizes give the same examples."""
        size = self.sizes(size)
        rng = np.random.default_rng([seed, _stable_hash(self.name)])
        out = []
        for _ in range(n):
            pieces, info = self.sample(rng, **size)
            prompt = "".join(t for t, _ in pieces[:-1])
            answer = pieces[-1][0]
            chance = float(info.pop("chance"))
            out.append(Example(prompt, answer, _ids(prompt), _ids(answer), chance, info))
        return out

    def score(self, predictions: Sequence[Any], answers: Sequence[Any]) -> float:
        """Exact-match accuracy; predictions and answers are texts or id sequences."""
        if len(predictions) != len(answers):
            raise ValueError(f"score: {len(predictions)} predictions for {len(answers)} answers")
        if not answers:
            return 0.0
        hits = sum(_as_text(p) == _as_text(a) for p, a in zip(predictions, answers))
        return hits / len(answers)

    def training_batches(self, batch_size: int, seed: int = 0, seq_len: int | None = None,
                         pad_id: int = 0, **size) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Endless batches ``(tokens [b, l+1] int32, loss_mask [b, l] uint8)``.

        Each row is one example's full text (prompt and answer) padded with ``pad_id`` on
        the right; ``loss_mask[i, t]`` is 1 exactly where the target ``tokens[i, t+1]`` is
        an answer token. ``l + 1`` is ``seq_len + 1`` when given (longer examples are an
        error), else the batch's longest example.
        """
        size = self.sizes(size)
        rng = np.random.default_rng([seed, _stable_hash(self.name), 1])
        while True:
            rows = []
            for _ in range(batch_size):
                pieces, _ = self.sample(rng, **size)
                ids = np.concatenate([_ids(t) for t, _ in pieces])
                ans = np.concatenate([np.full(len(t), a, dtype=bool) for t, a in pieces])
                rows.append((ids, ans))
            width = max(len(r[0]) for r in rows) if seq_len is None else seq_len + 1
            tokens = np.full((batch_size, width), pad_id, dtype=np.int32)
            mask = np.zeros((batch_size, width - 1), dtype=np.uint8)
            for i, (ids, ans) in enumerate(rows):
                if len(ids) > width:
                    raise ValueError(f"{self.name}: an example of {len(ids)} tokens does not fit seq_len + 1 = {width}")
                tokens[i, :len(ids)] = ids
                mask[i, :len(ids) - 1] = ans[1:]
            yield tokens, mask


def _as_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    return bytes(int(t) & 0xFF for t in x).decode("latin-1")


def _stable_hash(name: str) -> int:
    """A hash of the task name that does not change between Python runs."""
    return int.from_bytes(name.encode(), "little") % (1 << 62)


# ---------------------------------------------------------------- phonebook
_FIRST = ("Alice Bruno Clara Diego Elena Felix Greta Hugo Irene Jonas Karin Liam Maya Nils Olga Pablo Quinn "
          "Rosa Sven Tara Umar Vera Walt Xenia Yusuf Zoe Anton Bella Carl Dora Emil Fiona Gustav Hanna Ivan "
          "Julia Kurt Lena Marco Nora Oscar Paula Rafael Sara Tomas Ursula Viktor Wanda").split()
_LAST = ("Adler Berg Costa Dahl Engel Fischer Garcia Hansen Ito Jensen Keller Lopez Meyer Novak Olsen Petrov "
         "Quast Rossi Schmidt Tanaka Ueda Vogel Weber Young Zimmer Brandt Castro Diaz Eriksen Fuchs Graf "
         "Horvat Iversen Jovanovic Kowalski Lindqvist Moreau Nakamura Ortiz Popescu").split()


class Phonebook(Task):
    """"Name: number" lines, two worked question/answer examples, then a query.

    Sizes: ``length`` (prompt tokens: the book grows while the prompt stays within it;
    at least ``min_entries`` entries) or ``entries`` (a fixed count, overriding length).
    The answer is the queried number (``digits`` digits, written ddd-dddd for 7).
    """

    name = "phonebook"
    defaults = {"length": 512, "entries": None, "digits": 7, "min_entries": 3}
    _QUESTION = "Q: What is the number of {name}?\nA: "

    def _number(self, rng, digits: int) -> str:
        d = "".join(str(x) for x in rng.integers(0, 10, size=digits))
        return d[:3] + "-" + d[3:] if digits > 4 else d

    def sample(self, rng, length, entries, digits, min_entries):
        num_len = len(self._number(rng, digits))
        longest_name = max(map(len, _FIRST)) + 1 + max(map(len, _LAST))
        # the three questions and two answers at their longest, so the prompt stays within length
        qa_len = 3 * (len(self._QUESTION.format(name="")) + longest_name) + 2 * (num_len + 1)
        limit = len(_FIRST) * len(_LAST)
        if entries is not None and not 3 <= entries <= limit:
            raise ValueError(f"phonebook: entries must be in [3, {limit}]")
        names, numbers, seen, book_len = [], [], set(), 1
        while len(names) < (entries if entries is not None else limit):
            name = f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"
            if name in seen:
                continue
            entry = len(name) + 2 + num_len + 1
            if entries is None and len(names) >= max(min_entries, 3) and book_len + entry + qa_len > length:
                break
            seen.add(name)
            names.append(name)
            numbers.append(self._number(rng, digits))
            book_len += entry
        n = len(names)
        book = "".join(f"{names[i]}: {numbers[i]}\n" for i in rng.permutation(n))
        pieces: Pieces = [(book + "\n", False)]
        for i in rng.permutation(n)[:3]:
            pieces += [(self._QUESTION.format(name=names[i]), False), (numbers[i], True), ("\n", False)]
        return pieces[:-1], {"chance": 1.0 / n, "entries": n, "numbers": numbers}

    def random_guess(self, example, rng):
        return example.info["numbers"][rng.integers(len(example.info["numbers"]))]


# ---------------------------------------------------------------- MQAR
_SYMBOLS = string.ascii_letters + string.digits + "!#$%&()*+-/<>?@[]^_{}~"


class MQAR(Task):
    """Multi-query associative recall: ``pairs`` key-value pairs, then ``queries`` keys
    each followed by its value. Every symbol is one token; keys come from the first
    ``key_vocab`` symbols of a fixed alphabet, values from the next ``value_vocab``.

    Text: each pair "kv " (three tokens), "|", then the queries "kv " likewise. The
    evaluation prompt holds the earlier queries with their values and ends at the last
    query's key; its answer is that value. Training masks every query's value.
    """

    name = "mqar"
    defaults = {"pairs": 16, "queries": 4, "key_vocab": 32, "value_vocab": 32}

    def sample(self, rng, pairs, queries, key_vocab, value_vocab):
        if key_vocab + value_vocab > len(_SYMBOLS):
            raise ValueError(f"mqar: key_vocab + value_vocab must be <= {len(_SYMBOLS)}")
        if not 1 <= queries <= pairs <= key_vocab:
            raise ValueError("mqar: need 1 <= queries <= pairs <= key_vocab")
        keys = rng.permutation(key_vocab)[:pairs]
        values = rng.integers(0, value_vocab, size=pairs)
        k = [_SYMBOLS[i] for i in keys]
        v = [_SYMBOLS[key_vocab + i] for i in values]
        pieces: Pieces = [("".join(f"{a}{b} " for a, b in zip(k, v)) + "|", False)]
        for j, q in enumerate(rng.permutation(pairs)[:queries]):
            pieces += [(k[q], False), (v[q], True)] + ([(" ", False)] if j + 1 < queries else [])
        return pieces, {"chance": 1.0 / value_vocab, "value_symbols": _SYMBOLS[key_vocab:key_vocab + value_vocab]}

    def random_guess(self, example, rng):
        s = example.info["value_symbols"]
        return s[rng.integers(len(s))]


# ---------------------------------------------------------------- selective copying
class SelectiveCopy(Task):
    """``tokens`` content symbols (from an alphabet of ``vocab``) scattered at random
    places in a row of ``length`` noise dots, then "|"; the answer is the symbols in
    order. The prompt is ``length + 1`` tokens."""

    name = "selective_copy"
    defaults = {"length": 64, "tokens": 8, "vocab": 16}

    def sample(self, rng, length, tokens, vocab):
        if not 1 <= tokens <= length or not 1 <= vocab <= 26:
            raise ValueError("selective_copy: need 1 <= tokens <= length and 1 <= vocab <= 26")
        row = ["."] * length
        symbols = [string.ascii_lowercase[i] for i in rng.integers(0, vocab, size=tokens)]
        for pos, s in zip(sorted(rng.permutation(length)[:tokens].tolist()), symbols):
            row[pos] = s
        return [("".join(row) + "|", False), ("".join(symbols), True)], \
            {"chance": float(vocab) ** -tokens, "vocab": vocab}

    def random_guess(self, example, rng):
        return "".join(string.ascii_lowercase[i] for i in rng.integers(0, example.info["vocab"],
                                                                        size=len(example.answer)))


# ---------------------------------------------------------------- passkey / needle in a haystack
_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
           "The river flows to the sea. Birds sing in the morning. ")


class Passkey(Task):
    """A ``digits``-digit pass key hidden in filler text at relative ``depth`` (0 = start,
    1 = end; None: uniformly random), then the question. The prompt is exactly
    ``length`` tokens."""

    name = "passkey"
    defaults = {"length": 1024, "digits": 5, "depth": None}
    _QUESTION = "\nWhat is the pass key? The pass key is "

    def sample(self, rng, length, digits, depth):
        key = "".join(str(x) for x in rng.integers(0, 10, size=digits))
        needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
        filler_len = length - len(needle) - len(self._QUESTION)
        if filler_len < 0:
            raise ValueError(f"passkey: length {length} is below the minimum {length - filler_len}")
        d = rng.random() if depth is None else float(depth)
        before = int(round(d * filler_len))
        start = int(rng.integers(len(_FILLER)))
        filler = (_FILLER * (filler_len // len(_FILLER) + 2))[start:start + filler_len]
        prompt = filler[:before] + needle + filler[before:] + self._QUESTION
        return [(prompt, False), (key, True)], {"chance": 10.0 ** -digits, "depth": d, "digits": digits}

    def random_guess(self, example, rng):
        return "".join(str(x) for x in rng.integers(0, 10, size=example.info["digits"]))


TASKS = {t.name: t for t in (Phonebook(), MQAR(), SelectiveCopy(), Passkey())}


def get_task(name: str) -> Task:
    """A task by name: phonebook, mqar, selective_copy (or copy), passkey (or needle)."""
    name = {"copy": "selective_copy", "needle": "passkey"}.get(name, name)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
