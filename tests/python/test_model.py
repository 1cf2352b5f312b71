"""mambatron.Model from Python: presets, parameter layout, loss at init, training by
hand-written SGD through numpy views, decoding, packed documents and errors."""
import math

import numpy as np
import pytest

import mambatron as mt

TINY = ["tiny-hybrid", "tiny-mamba2", "tiny-mamba", "tiny-transformer"]


def tokens_for(rng, vocab, b, l):
    return rng.integers(0, vocab, size=(b, l), dtype=np.int32)


@pytest.mark.parametrize("preset", TINY)
def test_parameters_follow_config_shapes(preset):
    model = mt.Model.from_config(preset, seed=0)
    cfg = mt.get_preset(preset)
    shapes = cfg.parameter_shapes()
    params = model.parameters()
    assert list(params) == list(shapes)
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert list(model.gradients()) == list(shapes)
    assert model.num_parameters() == cfg.parameter_count()["total"]
    assert model.flat_parameters.numel() == model.num_parameters()
    mask = model.weight_decay_mask.numpy()
    assert mask.sum() == sum(math.prod(s) for n, s in shapes.items() if len(s) >= 2 and not n.endswith("A_log"))


def test_parameters_are_views_of_the_flat_buffer():
    model = mt.Model.from_config("tiny-mamba2", seed=1)
    view = model.parameters()["norm_f.weight"].numpy()
    view[:] = 3.0
    flat = model.flat_parameters.numpy()
    offset = model.num_parameters() - 256 * 128 - 128  # norm_f [128], then lm_head [256, 128]
    np.testing.assert_array_equal(flat[offset:offset + 128], 3.0)


@pytest.mark.parametrize("preset", TINY)
def test_loss_at_init_is_near_log_vocab(preset, rng):
    model = mt.Model.from_config(preset, seed=int(rng.integers(1 << 31)))
    tokens = tokens_for(rng, 256, 2, 33)
    loss = model.loss(tokens)
    # Normed features times lm_head ~ N(0, 0.02²) give logits of std 0.02·√128 ≈ 0.23,
    # which raise the expected loss above ln V by about half their variance.
    assert abs(loss - math.log(256)) < 0.15
    assert model.forward_backward(tokens) == pytest.approx(loss, rel=1e-6)


def test_sgd_steps_lower_the_loss_on_a_repeated_batch(rng):
    model = mt.Model.from_config("tiny-hybrid", seed=3)
    tokens = tokens_for(rng, 256, 2, 33)
    params, grads = model.flat_parameters.numpy(), model.flat_gradients.numpy()
    losses = []
    for _ in range(8):
        losses.append(model.forward_backward(tokens))
        # in place, through the views; a step small enough that every one lowers the
        # loss on any draw (at 0.5 about one draw in 25 overshoots on its last step)
        params -= 0.25 * grads
    final = model.loss(tokens)
    assert all(b < a for a, b in zip(losses, losses[1:] + [final])), losses
    assert final < losses[0] - 0.5


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("dtype, tol", [("f64", 1e-9), ("f32", 1e-4)])
def test_decode_equals_logits(preset, dtype, tol, rng):
    # A larger init_std than the presets' so that the logits differ across positions.
    model = mt.Model.from_config(preset, dtype=dtype, seed=int(rng.integers(1 << 31)), init_std=0.1)
    tokens = tokens_for(rng, 256, 2, 20)
    full = model.logits(tokens).numpy()
    state = model.new_state(2, 24)
    got = [model.prefill(tokens[:, :9], state).numpy()]
    for t in range(9, 20):
        got.append(model.step(np.ascontiguousarray(tokens[:, t]), state).numpy())
    got = np.stack(got, axis=1)
    ref = full[:, 8:]
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    np.testing.assert_array_equal(state.lengths.numpy(), [20, 20])


def test_packed_documents_match_separate_runs(rng):
    model = mt.Model.from_config("tiny-hybrid", dtype="f64", seed=4, init_std=0.1)
    tokens = tokens_for(rng, 256, 1, 17)
    seq_idx = np.array([[0] * 7 + [1] * 9], dtype=np.int32)
    packed = model.logits(tokens[:, :16], seq_idx).numpy()
    first = model.logits(tokens[:, :7]).numpy()
    second = model.logits(np.ascontiguousarray(tokens[:, 7:16])).numpy()
    np.testing.assert_allclose(packed, np.concatenate([first, second], axis=1), rtol=0, atol=1e-12)
    loss = model.loss(tokens, seq_idx=seq_idx)
    separate = (7 * model.loss(tokens[:, :8]) + 9 * model.loss(np.ascontiguousarray(tokens[:, 7:]))) / 16
    assert loss == pytest.approx(separate, rel=1e-12)


def test_loss_mask_and_accumulation(rng):
    model = mt.Model.from_config("tiny-transformer", dtype="f64", seed=5)
    tokens = tokens_for(rng, 256, 2, 9)
    mask = np.ones((2, 8), dtype=np.uint8)
    mask[:, :4] = 0
    masked = model.loss(tokens, mask)
    assert masked != pytest.approx(model.loss(tokens), rel=1e-9)
    model.forward_backward(tokens, mask)
    once = model.flat_gradients.numpy().copy()
    model.forward_backward(tokens, mask, grad_scale=0.5, accumulate=True)
    np.testing.assert_allclose(model.flat_gradients.numpy(), 1.5 * once, rtol=1e-12, atol=1e-300)


def test_config_forms_and_load_parameters():
    cfg = mt.get_preset("tiny-mamba").replace(d_model=32)
    a = mt.Model(cfg, dtype="f64")
    b = mt.Model(cfg.to_dict(), dtype="f32")
    assert a.config["mamba1"]["dt_rank"] == 2  # "auto" = ceil(32 / 16)
    a.init(9)
    b.load_parameters(a.parameters())
    np.testing.assert_array_equal(b.flat_parameters.numpy(), a.flat_parameters.numpy().astype(np.float32))
    arrays = {k: v.numpy().copy() for k, v in a.parameters().items()}
    del arrays["lm_head.weight"]
    with pytest.raises(ValueError, match="'lm_head.weight' is missing"):
        b.load_parameters(arrays)
    assert "tiny-mamba" not in repr(b) and "'mmmm'" in repr(b)


def test_errors(rng):
    model = mt.Model.from_config("tiny-mamba2", seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.loss(np.full((1, 5), 256, dtype=np.int32))
    with pytest.raises(ValueError, match=r"expected \[batch, seq_len \+ 1\]"):
        model.forward_backward(np.zeros(5, dtype=np.int32))
    with pytest.raises(TypeError, match="dtype f32"):
        model.loss(np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="seq_idx has shape"):
        model.loss(tokens_for(rng, 256, 1, 5), seq_idx=np.zeros((1, 5), dtype=np.int32))
    # Caught by the model itself, before any op (on CUDA the ops do not check the order).
    with pytest.raises(ValueError, match=r"Model\.loss: seq_idx decreases in row 0 at position 3 \(2 then 1\)"):
        model.loss(tokens_for(rng, 256, 1, 5), seq_idx=np.array([[0, 1, 2, 1]], dtype=np.int32))
    with pytest.raises(ValueError, match="unknown preset"):
        mt.Model("tiny-nothing")
    with pytest.raises(ValueError, match="unknown config key 'mamba2.bogus'"):
        mt._C.Model({"pattern": "M", "mamba2": {"bogus": 1}})
    if mt.built_with_cuda():
        with pytest.raises(TypeError, match="dtype f64"):
            mt.Model("tiny-mamba2", dtype="f64", device="cuda:0")
    else:
        with pytest.raises(TypeError, match="built without"):
            mt.Model("tiny-mamba2", device="cuda:0")
    with pytest.raises(TypeError, match="bf16"):
        mt.Model("tiny-mamba2", dtype="bf16")


def test_recompute_keeps_the_bits_and_saves_memory(rng):
    model = mt.Model.from_config("tiny-hybrid", seed=3, pattern="M*M-M*M-")
    tokens = tokens_for(rng, model.config["vocab_size"], 4, 65)

    def run(recompute):
        model.recompute = recompute  # a new mode lays out the workspace afresh
        mt.reset_peak_memory_stats("cpu")
        before = mt.memory_allocated("cpu")
        loss = model.forward_backward(tokens)
        return loss, mt.max_memory_allocated("cpu") - before, model.flat_gradients.numpy().copy()

    assert model.recompute is False
    loss_kept, peak_kept, g_kept = run(False)
    loss_rec, peak_rec, g_rec = run(True)
    assert model.recompute is True
    assert loss_rec == loss_kept
    assert g_rec.tobytes() == g_kept.tobytes()
    assert peak_rec < 0.75 * peak_kept, (peak_rec, peak_kept)


def test_forward_backward_repeats_bit_for_bit():
    """Same model, same batch: the gradients are identical on every call (no dependence
    on where scratch memory lands or on thread scheduling)."""
    cfg = {"pattern": "MM*-m", "d_model": 16, "vocab_size": 32, "init_std": 0.2,
           "mamba2": {"head_dim": 8, "d_state": 8, "n_groups": 2, "chunk_size": 4},
           "mamba1": {"d_state": 4, "dt_rank": 3},
           "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "rotary_fraction": 0.5},
           "mlp": {"ffn_hidden": 24}}
    model = mt.Model(cfg, "f64")
    model.init(5)
    tokens = np.random.default_rng(1).integers(0, 32, (2, 9), dtype=np.int32)
    model.forward_backward(tokens)
    first = {k: v.numpy().copy() for k, v in model.gradients().items()}
    for _ in range(10):
        model.forward_backward(tokens)
        for k, v in model.gradients().items():
            assert v.numpy().tobytes() == first[k].tobytes(), k
