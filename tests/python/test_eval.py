"""mambatron.eval: synthetic tasks, perplexity, the lm-evaluation-harness adapter, the CLI."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import mambatron as mt
from mambatron.cli import main
from mambatron.eval import MambatronLM, evaluate_task, get_task, perplexity, plot_accuracy
from mambatron.eval.harness import log_softmax

SMALL = {  # sizes that keep the tests fast and make chance large enough to measure
    "phonebook": {"length": 400},
    "mqar": {"pairs": 8, "queries": 4, "key_vocab": 16, "value_vocab": 4},
    "selective_copy": {"length": 24, "tokens": 1, "vocab": 5},
    "passkey": {"length": 160, "digits": 1},
}


def tiny_model(seed=0):
    return mt.Model.from_config("tiny-hybrid", seed=seed, d_model=32, mlp={"ffn_hidden": 64},
                                attention={"num_heads": 2, "num_kv_heads": 1, "head_dim": 16},
                                mamba2={"head_dim": 16}, mamba1={"dt_rank": 4})


def save_checkpoint(model, folder):
    folder.mkdir()
    model.model_config.save(folder / "config.json")
    mt.save_safetensors(str(folder / "model.safetensors"), model.parameters())
    return str(folder)


# ---------------------------------------------------------------- tasks
@pytest.mark.parametrize("name", sorted(SMALL))
def test_oracle_random_and_determinism(name):
    task = get_task(name)
    ex = task.make_examples(400, seed=3, **SMALL[name])
    answers = [e.answer for e in ex]
    assert task.score(answers, answers) == 1.0
    assert task.score([e.answer_ids for e in ex], answers) == 1.0  # ids score like text
    rng = np.random.default_rng(0)
    acc = task.score([task.random_guess(e, rng) for e in ex], answers)
    chance = np.mean([e.chance for e in ex])
    assert abs(acc - chance) <= 4 * math.sqrt(chance * (1 - chance) / len(ex)) + 1e-9, (acc, chance)
    again = task.make_examples(400, seed=3, **SMALL[name])
    assert [(e.prompt, e.answer) for e in again] == [(e.prompt, e.answer) for e in ex]
    assert [e.prompt for e in task.make_examples(5, seed=4, **SMALL[name])] != [e.prompt for e in ex[:5]]
    for e in ex[:20]:  # ids are the byte tokenizer's
        assert e.prompt_ids.dtype == np.int32 and bytes(e.prompt_ids.astype(np.uint8)).decode() == e.prompt
        np.testing.assert_array_equal(mt.tokenizers.ByteTokenizer().encode(e.answer), e.answer_ids)


def test_lengths_are_as_requested():
    for L in (256, 1024, 4096):
        for e in get_task("phonebook").make_examples(10, 0, length=L):
            assert L - 60 <= e.length <= L and e.info["entries"] >= 3
            assert e.answer in e.prompt.split("\n\n")[0] and e.prompt.count("Q: ") == 3
        assert all(e.length == L for e in get_task("passkey").make_examples(10, 0, length=L))
        assert all(e.length == L + 1 for e in get_task("selective_copy").make_examples(10, 0, length=L))
    ex = get_task("phonebook").make_examples(5, 0, entries=7)
    assert all(e.info["entries"] == 7 and e.prompt.split("\n\n")[0].count("\n") == 6 for e in ex)
    ex = get_task("mqar").make_examples(5, 0, pairs=10, queries=3)
    assert all(e.length == 3 * 10 + 1 + 3 * 2 + 1 for e in ex)
    for e in get_task("passkey").make_examples(5, 0, length=500, depth=0.5, digits=5):
        assert abs(e.prompt.index(f"is {e.answer}.") - 250) < 40
    with pytest.raises(ValueError, match="unknown size"):
        get_task("mqar").make_examples(1, 0, bogus=1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_mask_covers_only_answers(name):
    task = get_task(name)
    tokens, mask = next(task.training_batches(6, seed=1, **SMALL[name]))
    assert tokens.dtype == np.int32 and mask.dtype == np.uint8 and mask.shape == (6, tokens.shape[1] - 1)
    for row, m in zip(tokens, mask):
        text = bytes(row.astype(np.uint8)).rstrip(b"\0").decode()
        masked = "".join(chr(t) for t, k in zip(row[1:], m) if k)
        if name == "phonebook":  # the two worked answers and the asked one, which are book numbers
            nums = [line.split("A: ")[1] for line in text.split("\n") if line.startswith("A: ")]
            assert masked == "".join(nums) and len(nums) == 3
        elif name == "mqar":  # every query's value, each read from the pairs
            pairs = dict((p[0], p[1]) for p in text.split("|")[0].split())
            queries = text.split("|")[1].split()
            assert masked == "".join(pairs[q[0]] for q in queries) and all(q[1] == pairs[q[0]] for q in queries)
        else:  # the final answer: what follows "|" or the question
            tail = text.split("|")[-1] if name == "selective_copy" else text.rsplit("is ", 1)[1]
            assert masked == tail
        assert m[len(text):].sum() == 0  # no padding target is scored
    seq = next(task.training_batches(2, seed=1, seq_len=600, **SMALL[name]))[0]
    assert seq.shape == (2, 601)


def test_tiny_model_learns_from_masked_batches():
    """Thirty AdamW steps on MQAR batches with the answer mask lower the answer loss."""
    model = tiny_model(seed=1)
    opt = mt.AdamW(model.flat_parameters, model.flat_gradients, model.weight_decay_mask, weight_decay=0.0)
    batches = get_task("mqar").training_batches(8, seed=0, pairs=4, queries=4, key_vocab=8, value_vocab=4)
    losses = []
    for _ in range(30):
        losses.append(model.forward_backward(*next(batches)))
        opt.step(3e-3)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    # evaluation runs on the trained model and is reproducible
    r1 = evaluate_task(model, "mqar", 16, seed=5, pairs=4, queries=4, key_vocab=8, value_vocab=4)
    r2 = evaluate_task(model, "mqar", 16, seed=5, pairs=4, queries=4, key_vocab=8, value_vocab=4)
    assert r1["accuracy"] == r2["accuracy"] and 0 <= r1["accuracy"] <= 1 and r1["chance"] == 0.25
    json.dumps(r1)


def test_evaluate_task_equals_greedy_generation(tmp_path):
    model = tiny_model()
    res = evaluate_task(model, "passkey", 6, seed=2, lengths=[100, 140], batch_size=4, keep_predictions=True, digits=3)
    assert res["lengths"] == [100, 140] and len(res["accuracy"]) == 2
    for run, L in zip(res["by_length"], (100, 140)):
        assert run["mean_length"] == L
        for e, pred in zip(get_task("passkey").make_examples(6, 2, length=L, digits=3), run["predictions"]):
            ids = list(e.prompt_ids)
            for _ in range(3):  # greedy: the argmax of a full forward, token by token
                ids.append(int(np.asarray(model.logits(np.array([ids], np.int32)).numpy())[0, -1].argmax()))
            assert bytes(np.array(ids[-3:], np.uint8)).decode("latin-1") == pred
    json.dumps(res)
    path = plot_accuracy({"tiny": res, "tiny again": res}, str(tmp_path / "acc.png"))
    assert path is None or (tmp_path / "acc.png").stat().st_size > 0  # None: matplotlib is not installed


# ---------------------------------------------------------------- perplexity
def test_perplexity_equals_the_direct_mean_loss(tmp_path):
    rng = np.random.default_rng(0)
    prefix = str(tmp_path / "held")
    with mt.IndexedDatasetWriter(prefix, 1) as w:
        for _ in range(12):
            w.add_document(rng.integers(1, 256, size=int(rng.integers(20, 90))))
    model = tiny_model()
    res = perplexity(model, prefix, seq_len=32, batches=3, eval_fraction=0.5, batch_size=2)
    loader = mt.DataLoader(mt.IndexedDataset(prefix), 32, shuffle=False, split="eval", eval_fraction=0.5)
    nll = []
    for _ in range(3):
        tokens, seq_idx = (np.asarray(t.numpy()) for t in loader.next_batch(2))
        logits = np.asarray(model.logits(tokens[:, :-1], np.ascontiguousarray(seq_idx[:, :-1])).numpy())
        lp = log_softmax(logits)
        nll.append(-np.take_along_axis(lp, tokens[:, 1:, None].astype(np.int64), -1))
    direct = float(np.mean(nll))
    assert res["tokens"] == 3 * 2 * 32
    assert res["nats_per_token"] == pytest.approx(direct, rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(direct), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(direct / math.log(2), rel=1e-5)
    whole = perplexity(model, prefix, seq_len=32, batches=3, batch_size=2)
    assert whole["nats_per_token"] != res["nats_per_token"]  # another split


# ---------------------------------------------------------------- the harness adapter
def direct_scores(model, context, continuation):
    ctx = list(context.encode()) or [0]
    ids = ctx + list(continuation.encode())
    lp = log_softmax(np.asarray(model.logits(np.array([ids[:-1]], np.int32)).numpy())[0])
    rows = np.arange(len(ctx) - 1, len(ids) - 1)
    targets = np.array(ids[len(ctx):])
    return lp[rows, targets].sum(), bool((lp[rows].argmax(-1) == targets).all())


def test_adapter_loglikelihood_equals_direct_computation():
    model = tiny_model()
    lm = MambatronLM(model, batch_size=3)
    questions = [("Q: 2 + 2 = ?\nA:", [" 4", " 5", " four", " 22"]),
                 ("The capital of France is", [" Paris", " Rome", " Berlin"]),
                 ("", ["a", "bb"])]
    requests = [(q, c) for q, cs in questions for c in cs]
    got = lm.loglikelihood(requests)
    for (ctx, cont), (lp, greedy) in zip(requests, got):
        want_lp, want_greedy = direct_scores(model, ctx, cont)
        assert lp == pytest.approx(want_lp, rel=1e-5, abs=1e-5) and greedy == want_greedy
    picks = [int(np.argmax([got[requests.index((q, c))][0] for c in cs])) for q, cs in questions]
    assert picks == [int(np.argmax([direct_scores(model, q, c)[0] for c in cs])) for q, cs in questions]

    class Instance:  # a harness request carries its arguments in .args
        def __init__(self, *args):
            self.args = args

    assert lm.loglikelihood([Instance(*r) for r in requests]) == got
    # greedy continuation: is_greedy is True for the model's own argmax token
    nxt = int(np.asarray(model.logits(np.array([list(b"abc")], np.int32)).numpy())[0, -1].argmax())
    if 0 < nxt < 128:
        assert lm.loglikelihood([("abc", chr(nxt))])[0][1]


def test_adapter_splits_context_and_continuation_as_the_harness_does():
    """Whitespace that ends the context is scored with the continuation (the harness's
    causal models do the same), the whole text is encoded once, and an empty context is EOD."""
    model = tiny_model()
    lm = MambatronLM(model)
    assert lm._encode_pair("A: ", "4") == (list(b"A:"), list(b" 4"))
    assert lm._encode_pair("", "ab") == ([0], list(b"ab"))
    assert lm._encode_pair(" \n", "ab") == ([0], list(b" \nab"))
    (lp, greedy), = lm.loglikelihood([("The answer is \n ", "4")])
    want = direct_scores(model, "The answer is", " \n 4")
    assert lp == pytest.approx(want[0], rel=1e-5, abs=1e-5) and greedy == want[1]


class _PrefixTokenizer:
    """Bytes after a start marker on every call, as sentencepiece's dummy prefix does."""
    name, vocab_size, eod_id = "prefixed bytes", 256, 0

    def encode(self, text):
        return [1] + list(text.encode())


def test_adapter_encodes_the_whole_text_then_splits():
    """A tokenizer that marks the start of each text marks the context's, not the
    continuation's: the whole text is encoded and cut after the context's tokens."""
    model = tiny_model()
    lm = MambatronLM(model, tokenizer=_PrefixTokenizer())
    assert lm._encode_pair("ab", " c") == ([1, *b"ab"], list(b" c"))
    (lp, _), = lm.loglikelihood([("ab", " cd")])
    ids = [1, *b"ab cd"]
    logp = log_softmax(np.asarray(model.logits(np.array([ids[:-1]], np.int32)).numpy())[0])
    assert lp == pytest.approx(sum(logp[t - 1, ids[t]] for t in range(3, 6)), rel=1e-5)


def test_adapter_rolling_and_generate_until():
    model = tiny_model()
    text = "a rolling text of some length, scored in windows."
    ids = [0] + list(text.encode())
    lp = log_softmax(np.asarray(model.logits(np.array([ids[:-1]], np.int32)).numpy())[0])
    full = lp[np.arange(len(ids) - 1), ids[1:]].sum()
    assert MambatronLM(model).loglikelihood_rolling([(text,)])[0] == pytest.approx(full, rel=1e-5)
    windowed = MambatronLM(model, max_length=16, batch_size=2).loglikelihood_rolling([text, "x"])
    # windows of 16 targets counted back from the end, each target once, each window with 16 inputs at most
    n, want = len(ids), 0.0
    for end in range(n, 1, -16):
        start = max(0, end - 17)
        lp_w = log_softmax(np.asarray(model.logits(np.array([ids[start:end - 1]], np.int32)).numpy())[0])
        want += sum(lp_w[t - 1 - start, ids[t]] for t in range(max(1, end - 16), end))
    assert windowed[0] == pytest.approx(want, rel=1e-5) and windowed[0] != pytest.approx(full, rel=1e-9)
    x_lp = log_softmax(np.asarray(model.logits(np.array([[0]], np.int32)).numpy())[0])[0, ord("x")]
    assert windowed[1] == pytest.approx(x_lp, rel=1e-5)
    lm = MambatronLM(model, batch_size=2)
    free = lm.generate_until([("abc", {"max_gen_toks": 12})])[0]
    want = mt.generate(model, list(b"abc"), 12, temperature=0.0, tokenizer="byte")
    assert free == want
    stop = free[3:5] if len(free) >= 5 else None
    cut = lm.generate_until([("abc", {"until": [stop] if stop else [], "max_gen_toks": 12}), ("x", {})])
    assert cut[0] == (free[:free.find(stop)] if stop else free) and isinstance(cut[1], str)


def test_adapter_loads_a_checkpoint(tmp_path):
    model = tiny_model()
    lm = MambatronLM(pretrained=save_checkpoint(model, tmp_path / "ckpt"), batch_size="4")
    assert lm.loglikelihood([("ab", "c")])[0][0] == pytest.approx(direct_scores(model, "ab", "c")[0], rel=1e-6)


# ---------------------------------------------------------------- CLI
def test_cli_help_and_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0 and "perplexity" in capsys.readouterr().out
    ckpt = save_checkpoint(tiny_model(), tmp_path / "ckpt")
    out = tmp_path / "r.json"
    assert main(["eval", "mqar", "--model", ckpt, "--n", "4", "--size", "pairs=4", "--size", "queries=2",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "mqar" and res["n"] == 4 and res["size"]["pairs"] == 4
    assert "mqar: length" in capsys.readouterr().out
    prefix = str(tmp_path / "d")
    with mt.IndexedDatasetWriter(prefix, 1) as w:
        for _ in range(4):
            w.add_document(np.arange(1, 60))
    proc = subprocess.run([sys.executable, "-m", "mambatron", "eval", "perplexity", "--model", ckpt, "--data", prefix,
                           "--seq-len", "16", "--batches", "2", "--batch-size", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "bits/byte" in proc.stdout and json.loads(out.read_text())["tokens"] == 64
    assert main(["eval", "perplexity", "--model", ckpt]) == 2  # no --data
