import random

import numpy as np
import pytest

import mambatron as mt


def pytest_collection_modifyitems(config, items):
    if mt.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, unseeded generator: every run draws new inputs."""
    return np.random.default_rng()


def assert_within_rule(out, same_precision_cpu, ref64, atol_rel=1e-6, what=""):
    """DESIGN.md's rule: |out - ref| <= 2 |cpu - ref| + atol, errors as max abs over elements."""
    out = np.asarray(out, dtype=np.float64)
    cpu = np.asarray(same_precision_cpu, dtype=np.float64)
    ref = np.asarray(ref64, dtype=np.float64)
    assert not np.isnan(out).any(), f"{what}: NaN in the output"
    scale = np.abs(ref).max()
    err_out, err_cpu = np.abs(out - ref).max(), np.abs(cpu - ref).max()
    assert err_out <= 2 * err_cpu + atol_rel * scale, f"{what}: error {err_out:.3e} > 2 x {err_cpu:.3e} + atol"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Byte-tokenized documents of a few repeated patterns, so a model can learn them."""
    prefix = str(tmp_path_factory.mktemp("train_data") / "ds")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    gen = random.Random(7)
    with mt.IndexedDatasetWriter(prefix, 8) as w:
        for d in range(60):
            text = " ".join(gen.choice(words) for _ in range(20 + d % 15)) + ".\n"
            w.add_document(np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64))
    return prefix
