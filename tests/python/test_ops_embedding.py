"""Embedding lookup and its gradient from Python, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_embedding_matches_numpy(id_dtype, rng):
    V, d = 41, 37
    w = rng.standard_normal((V, d))
    tokens = rng.integers(0, V, size=(2, 13)).astype(id_dtype)
    tokens[0, 1] = tokens[0, 0]  # a repeated id
    out = np.asarray(mt.embedding_forward(w, tokens))
    assert out.shape == (2, 13, d)
    np.testing.assert_array_equal(out, w[tokens])
    g = rng.standard_normal((2, 13, d))
    ref = np.zeros((V, d))
    np.add.at(ref, tokens.reshape(-1), g.reshape(-1, d))
    np.testing.assert_allclose(np.asarray(mt.embedding_backward(g, tokens, V)), ref, rtol=1e-14, atol=1e-15)
    dw = np.full((V, d), np.nan)
    mt.embedding_backward(g, tokens, dweight=dw)  # overwrites, NaN included
    np.testing.assert_allclose(dw, ref, rtol=1e-14, atol=1e-15)


def test_embedding_f32(rng):
    w = rng.standard_normal((9, 5)).astype(np.float32)
    tokens = rng.integers(0, 9, size=(3, 4))
    out = np.asarray(mt.embedding_forward(w, tokens))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, w[tokens])


def test_embedding_errors(rng):
    w = rng.standard_normal((9, 5))
    with pytest.raises(ValueError, match="'tokens' holds id 9 at \\[1, 2\\].*\\[0, 9\\)"):
        mt.embedding_forward(w, np.array([[0, 1, 2], [3, 4, 9]]))
    with pytest.raises(ValueError, match="'tokens' holds id -1"):
        mt.embedding_backward(rng.standard_normal((1, 2, 5)), np.array([[-1, 0]]), 9)
    with pytest.raises(TypeError, match="'tokens'.*f64"):
        mt.embedding_forward(w, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="'tokens'.*\\[b, l\\]"):
        mt.embedding_forward(w, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="'out'.*expected \\[1, 3, 5\\]"):
        mt.embedding_forward(w, np.zeros((1, 3), dtype=np.int64), out=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="vocab_size"):
        mt.embedding_backward(rng.standard_normal((1, 2, 5)), np.zeros((1, 2), dtype=np.int64))
