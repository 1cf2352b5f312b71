"""An lm-evaluation-harness model on mambatron: ``lm_eval --model mambatron --model_args
pretrained=PATH[,tokenizer=byte,batch_size=8,max_length=2048,device=cpu,dtype=f32]``.

:class:`MambatronLM` implements the harness's three requests on our Model and a
tokenizer and works without ``lm_eval``: each method takes a list of requests that are
either harness ``Instance`` objects (their ``args``) or plain tuples —
``loglikelihood``: (context, continuation) -> (log-probability, is_greedy);
``loglikelihood_rolling``: (text,) or text -> log-probability of the whole text;
``generate_until``: (context, {"until": [...], "max_gen_toks": N}) -> generated text.
When ``lm_eval`` is importable, a subclass of its ``LM`` is registered as "mambatron".

Scores come from one forward pass per batch (``Model.logits``): rows are padded on the
right, which leaves earlier positions untouched in a causal model. A (context,
continuation) pair is tokenized as the harness's own models do it: whitespace that ends
the context moves to the continuation, the whole text is encoded and split after the
context's tokens (a tokenizer that marks the start of a text, as sentencepiece does,
marks the context's alone); an empty context starts from the tokenizer's
end-of-document id; inputs longer than
``max_length`` keep their last ``max_length`` tokens.

Importing this module registers the model with ``lm_eval``. The ``lm_eval`` command,
which imports nothing of ours, finds it through ``_mambatron_lm_eval.pth``, which a pip
install puts in site-packages: it adds "mambatron" as a lazy entry when the harness loads
its list of models, and costs nothing before that (see python/_mambatron_lm_eval.py).
The CLI's default device is ``cuda:0``: where mambatron has no usable CUDA device the
model runs on the CPU instead, with a warning.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np


def _args(request: Any) -> tuple:
    """The arguments of a harness Instance, or the request itself as a tuple."""
    args = getattr(request, "args", request)
    return (args,) if isinstance(args, str) else tuple(args)


def _pick_device(device: Optional[str]) -> str:
    """The device to load on: None or "auto" picks the best one; a CUDA device that is not
    usable (the lm_eval CLI asks for cuda:0 by default) falls back to the CPU."""
    from .. import best_device, cuda_available

    if device is None or str(device) in ("", "auto"):
        return best_device()
    device = str(device)
    if device.startswith("cuda") and not cuda_available():
        warnings.warn(f"MambatronLM: device {device!r} is not usable here (mambatron sees no CUDA device); "
                      f"running on the CPU", RuntimeWarning, stacklevel=3)
        return "cpu"
    return device


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class MambatronLM:
    """Harness requests on a mambatron Model.

    model: a Model, or None with ``pretrained`` (a checkpoint or run folder, see
    :func:`mambatron.hf.load_model`). tokenizer: "byte", a tokenizer file/folder or an
    object (see :func:`mambatron.tokenizers.load_tokenizer`). device: where ``pretrained``
    is loaded ("cpu", "cuda[:N]", "auto"; see :func:`_pick_device`).
    """

    def __init__(self, model=None, pretrained: Optional[str] = None, tokenizer: Any = "byte", batch_size: Any = 8,
                 max_length: Any = 2048, max_gen_toks: Any = 256, device: Optional[str] = "cpu", dtype: str = "f32",
                 **unused: Any) -> None:
        from ..tokenizers import load_tokenizer

        if model is None:
            if pretrained is None:
                raise ValueError("MambatronLM: give a model or pretrained=PATH")
            from ..hf import load_model

            model = load_model(pretrained, dtype=dtype, device=_pick_device(device))
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)

    # ---- tokens ------------------------------------------------------------------------
    def _encode(self, text: str) -> List[int]:
        return [int(t) for t in self.tokenizer.encode(text)] if text else []

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """Context and continuation ids as the harness's causal models split them: trailing
        whitespace of the context joins the continuation; the whole text is encoded and
        cut after the context's own tokens; an empty context is the EOD id."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return [self.tokenizer.eod_id], self._encode(continuation)
        ctx = self._encode(context)
        return ctx, self._encode(context + continuation)[len(ctx):]

    def _logprobs(self, rows: Sequence[Tuple[List[int], int]]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """For each (ids, first): the log-probability of ids[t] for t in [first, len(ids))
        given ids[:t], and whether ids[t] is the argmax there; one forward pass per batch."""
        out: List[Any] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths share a batch
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            width = max(len(rows[i][0]) - 1 for i in chunk)
            inputs = np.zeros((len(chunk), width), dtype=np.int32)
            for r, i in enumerate(chunk):
                inputs[r, :len(rows[i][0]) - 1] = rows[i][0][:-1]
            logits = np.asarray(self.model.logits(inputs).to(device="cpu").numpy())
            for r, i in enumerate(chunk):
                ids, first = rows[i]
                pos = np.arange(first - 1, len(ids) - 1)  # the inputs that predict ids[first:]
                lp = log_softmax(logits[r, pos])
                targets = np.asarray(ids[first:])
                out[i] = (lp[np.arange(len(pos)), targets], lp.argmax(axis=-1) == targets)
        return out

    # ---- the harness requests ----------------------------------------------------------
    def loglikelihood(self, requests, **unused: Any) -> List[Tuple[float, bool]]:
        rows = []
        for req in requests:
            context, continuation = _args(req)[:2]
            ctx, cont = self._encode_pair(context, continuation)
            if not cont:
                raise ValueError(f"loglikelihood: the continuation of {context[-40:]!r} has no tokens")
            if len(cont) > self.max_length:
                raise ValueError(f"loglikelihood: a continuation of {len(cont)} tokens is longer than "
                                 f"max_length = {self.max_length}")
            ids = (ctx + cont)[-(self.max_length + 1):]
            rows.append((ids, len(ids) - len(cont)))
        return [(float(lp.sum()), bool(g.all())) for lp, g in self._logprobs(rows)]

    def loglikelihood_rolling(self, requests, **unused: Any) -> List[float]:
        """The log-probability of each whole text (its first token given the EOD id), in
        windows of at most max_length targets, each with as much preceding context as fits."""
        rows, owner = [], []
        for k, req in enumerate(requests):
            ids = [self.tokenizer.eod_id] + self._encode(_args(req)[0])
            for end in range(len(ids), 1, -self.max_length):  # targets [begin, end), disjoint, covering 1..n
                begin = max(1, end - self.max_length)
                start = max(0, end - 1 - self.max_length)
                rows.append((ids[start:end], begin - start))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, self._logprobs(rows)):
            totals[k] += float(lp.sum())
        return totals

    def generate_until(self, requests, **unused: Any) -> List[str]:
        """Greedy continuations, cut at the first of the ``until`` strings (or the EOD)."""
        from ..generate import generate

        prompts, budgets, stops = [], [], []
        for req in requests:
            args = _args(req)
            kwargs = dict(args[1]) if len(args) > 1 and args[1] else {}
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self._encode(args[0]) or [self.tokenizer.eod_id]
            prompts.append(ids[-max(1, self.max_length - budget):])
            budgets.append(budget)
            stops.append(until)
        texts: List[str] = []
        for s in range(0, len(prompts), self.batch_size):
            out = generate(self.model, prompts[s:s + self.batch_size], budgets[s:s + self.batch_size],
                           temperature=0.0, stop_tokens=[self.tokenizer.eod_id])
            texts += [self.tokenizer.decode(ids) for ids in out]
        results = []
        for text, until in zip(texts, stops):
            cut = min([text.find(u) for u in until if u and u in text], default=len(text))
            results.append(text[:cut])
        return results


try:  # registered with the harness when it is installed
    from lm_eval.api.model import LM as _LM
    from lm_eval.api.registry import register_model as _register_model
except ImportError:  # the adapter above works without it
    HarnessLM = None
else:
    try:  # the harness fills an empty registry with its own models, so they go first
        import lm_eval.models  # noqa: F401
    except ImportError:  # an older harness imports every backend (torch, ...) here
        pass

    class HarnessLM(MambatronLM, _LM):
        """MambatronLM as an lm_eval model (``--model mambatron``): MambatronLM's request
        methods, the harness's defaults for the rest (rank, world size, caching hooks)."""

        def __init__(self, **kwargs: Any) -> None:
            _LM.__init__(self)
            MambatronLM.__init__(self, **kwargs)
            self._device = str(self.model.device)

        @classmethod
        def create_from_arg_obj(cls, arg_dict, additional_config=None):
            """The harness's settings (batch_size, device: the CLI always passes its defaults,
            device cuda:0 and batch size 1) under the model's own arguments, which win."""
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            return cls(**{**extra, **dict(arg_dict)})

        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name", type(self.tokenizer).__name__))

    try:  # replaces the lazy entry of _mambatron_lm_eval; a second copy of this module keeps the first class
        _register_model("mambatron")(HarnessLM)
    except (ValueError, AssertionError):
        pass
