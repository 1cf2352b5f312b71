"""Generation from Python: greedy equals the full forward's argmax, batches of different
lengths equal each prompt alone, sampling filters and frequencies, seeds, stop tokens,
streaming, text with the byte tokenizer, and the ``mambatron generate`` CLI."""
import numpy as np
import pytest

import mambatron as mt
from mambatron.config import ModelConfig
from mambatron.generate import Generator, generate, sample_tokens, sampling_probabilities, sequence_seed


def tiny(pattern, dtype="f64", vocab=64, seed=None):
    cfg = ModelConfig(pattern=pattern, d_model=32, vocab_size=vocab, init_std=0.2).replace(
        mamba2={"head_dim": 8, "d_state": 8, "n_groups": 2, "chunk_size": 4}, mamba1={"d_state": 4},
        attention={"num_heads": 4, "num_kv_heads": 2, "rotary_fraction": 0.5}, mlp={"ffn_hidden": 48})
    return mt.Model.from_config(cfg, dtype=dtype, seed=int(np.random.default_rng().integers(1 << 31)) if seed is None
                                else seed)


def prompts(rng, lengths, vocab=64):
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("pattern", ["MM", "mm", "*-", "Mm*-"])
def test_greedy_is_the_argmax_of_the_full_forward(pattern, rng):
    model = tiny(pattern)
    batch = prompts(rng, [5, 2])
    out = generate(model, batch, [7, 4], temperature=0)
    assert [len(o) for o in out] == [7, 4]
    for p, o in zip(batch, out):
        seq = list(p)
        for t in o:
            logits = np.asarray(model.logits(np.array([seq], dtype=np.int64)))[0, -1]
            assert t == int(np.argmax(logits))
            seq.append(t)


@pytest.mark.parametrize("pattern", ["MM", "mm", "*-", "Mm*-"])
def test_batch_of_different_lengths_equals_each_alone(pattern, rng):
    model = tiny(pattern)
    batch = prompts(rng, [6, 1, 3, 3])
    budgets = [4, 7, 2, 7]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9}, {"temperature": 0.8, "top_k": 8}):
        seed = int(rng.integers(1 << 40))
        together = generate(model, batch, budgets, seed=seed, **kw)
        for i, (p, n) in enumerate(zip(batch, budgets)):
            alone = generate(model, p, n, seed=[sequence_seed(seed, i)], **kw)
            assert alone == together[i], (kw, i)


def test_seeds_streams_and_repeated_calls(rng):
    model = tiny("Mm*-")
    p = prompts(rng, [4])[0]
    gen = Generator(model)
    a = gen.generate(p, 20, temperature=1.5, seed=11)
    assert gen.generate(p, 20, temperature=1.5, seed=11) == a
    assert gen.generate(p, 20, temperature=1.5, seed=12) != a
    assert list(gen.generate(p, 20, temperature=1.5, seed=11, stream=True)) == a
    # A batch streams one list per round, None once a sequence has finished.
    rounds = list(gen.stream([p, p[:2]], [3, 1], temperature=0))
    assert len(rounds) == 3 and rounds[1][1] is None and rounds[2][1] is None
    assert [r[0] for r in rounds] == generate(model, p, 3, temperature=0)
    # top-k = 1 is greedy at any temperature and seed.
    assert generate(model, p, 8, temperature=2.0, top_k=1, seed=5) == generate(model, p, 8, temperature=0)


def test_stop_tokens_end_a_sequence(rng):
    model = tiny("MM")
    a, b = prompts(rng, [3, 5])
    free = generate(model, [a, b], 10, temperature=0)
    stop = free[0][4]
    first = free[0].index(stop)
    out = generate(model, [a, b], 10, temperature=0, stop_tokens=[[stop], []])
    assert out[0] == free[0][:first + 1] and out[1] == free[1]
    assert generate(model, a, 10, temperature=0, stop_tokens=stop) == free[0][:first + 1]


def test_state_logits_and_errors(rng):
    model = tiny("Mm*-", dtype="f32")
    gen = Generator(model)
    gen.start(prompts(rng, [3, 2]), 2, temperature=0)
    assert list(gen.logits.shape) == [2, 64] and len(gen.state.layers) == 4
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[1, 2], []], 3)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, [1, 64], 3)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, "hello", 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1, 2], 3, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1], [2]], [3])


def test_sampling_filters_on_hand_made_logits():
    q = np.array([0.15, 0.05, 0.5, 0.1, 0.2])
    z = np.log(q) - 1.0
    np.testing.assert_allclose(np.asarray(sampling_probabilities(z, top_p=0.6)), [0, 0, 0.5 / 0.7, 0, 0.2 / 0.7],
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(sampling_probabilities(z, top_k=3)),
                               [0.15 / 0.85, 0, 0.5 / 0.85, 0, 0.2 / 0.85], atol=1e-12)
    t = q ** 2 / (q ** 2).sum()
    np.testing.assert_allclose(np.asarray(sampling_probabilities(z, temperature=0.5)), t, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(sampling_probabilities(z, temperature=0)), [0, 0, 1, 0, 0])


def test_seeded_frequencies_match_the_target(rng):
    z = rng.normal(size=10)
    n = 30000
    for kw in ({}, {"temperature": 0.7, "top_k": 4}, {"top_p": 0.8, "temperature": 1.4}):
        target = np.asarray(sampling_probabilities(z, **kw))
        seed = int(rng.integers(1 << 40))
        drawn = np.asarray(sample_tokens(np.tile(z, (n, 1)), [seed] * n, list(range(n)), **kw))
        freq = np.bincount(drawn, minlength=10) / n
        se = np.sqrt(target * (1 - target) / n)
        assert np.all(freq[target == 0] == 0), kw
        assert np.all(np.abs(freq - target) <= 5 * se + 1e-12), (kw, freq, target)


def test_text_with_the_byte_tokenizer(rng):
    model = tiny("MM", vocab=256)
    gen = Generator(model, tokenizer="byte")
    text = gen.generate("ab", 12, temperature=1.0, seed=3, stop_tokens=[])
    ids = generate(model, [97, 98], 12, temperature=1.0, seed=3)
    assert text == mt.tokenizers.ByteTokenizer().decode(ids)
    assert "".join(gen.generate("ab", 12, temperature=1.0, seed=3, stop_tokens=[], stream=True)) == text
    # Default stop: the tokenizer's end of document.
    assert len(gen.generate(["a", "b"], 200, temperature=0)) == 2


def test_cli_generate_streams_text(tmp_path, capsys):
    from mambatron.cli import main

    model = tiny("Mm", dtype="f32", vocab=256, seed=7)
    model.model_config.save(tmp_path / "config.json")
    mt.save_safetensors(str(tmp_path / "model.safetensors"), model.parameters())
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    expected = Generator(model, tokenizer="byte").generate("hi", 6, temperature=0)
    assert out == "hi" + expected + "\n"


def test_load_model_accepts_a_training_run_folder(tmp_path):
    from mambatron.train import train

    args = mt.TrainArgs(model="tiny-mamba2", steps=2, seq_len=16, micro_batch=2, eval_every=0, progress=False,
                        plot=False, sample_tokens=0, out=str(tmp_path / "run"), corpus_bytes=1 << 16, log=["jsonl"])
    summary = train(args)
    model = mt.hf.load_model(tmp_path / "run")
    assert model.num_parameters() == summary["parameters"]
    with pytest.raises(ValueError, match="no config.json"):
        mt.hf.load_model(tmp_path)
