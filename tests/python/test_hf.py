"""Hugging Face mamba / mamba2 export and import: names, config keys, exact round trips,
files readable by the safetensors package, and logits against transformers when it and
torch are installed (they are on the GPU machine)."""
import json

import numpy as np
import pytest

import mambatron as mt
from mambatron.config import ModelConfig
from mambatron.hf import export_hf, import_hf, load_model


def tiny(pattern, n_groups=1, tie=False, seed=None):
    cfg = ModelConfig(pattern=pattern, d_model=32, vocab_size=64, init_std=0.2, tie_embeddings=tie).replace(
        mamba2={"head_dim": 8, "d_state": 8, "n_groups": n_groups, "chunk_size": 4}, mamba1={"d_state": 4})
    return mt.Model.from_config(cfg, seed=int(np.random.default_rng().integers(1 << 31)) if seed is None else seed)


@pytest.mark.parametrize("pattern,family,tie", [("MMM", "mamba2", False), ("mm", "mamba", False),
                                                ("MM", "mamba2", True), ("mmm", "mamba", True)])
def test_round_trip_is_exact(tmp_path, pattern, family, tie):
    model = tiny(pattern, tie=tie)
    config = export_hf(model, tmp_path, family)
    assert config["model_type"] == family and config["tie_word_embeddings"] is tie
    names = {e["name"] for e in mt.list_safetensors(str(tmp_path))}
    assert "backbone.embeddings.weight" in names and "backbone.norm_f.weight" in names
    assert ("lm_head.weight" in names) is not tie
    mixer = {n.split("mixer.")[1] for n in names if n.startswith("backbone.layers.0.mixer.")}
    if family == "mamba":
        assert mixer == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                         "dt_proj.bias", "A_log", "D", "out_proj.weight"}
    else:
        assert mixer == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                         "out_proj.weight"}
    cfg, tensors = import_hf(tmp_path)
    assert cfg.layers == pattern and cfg.tie_embeddings == tie
    ours = model.parameters()
    assert set(tensors) == set(ours)
    for name, t in tensors.items():
        np.testing.assert_array_equal(np.asarray(t), np.asarray(ours[name]), err_msg=name)
    back = load_model(tmp_path)
    tokens = np.random.default_rng().integers(0, 64, (2, 7))
    np.testing.assert_array_equal(np.asarray(back.logits(tokens)), np.asarray(model.logits(tokens)))


def test_config_keys(tmp_path):
    with pytest.warns(UserWarning, match="n_groups"):
        m2 = export_hf(tiny("MM", n_groups=2), tmp_path / "m2")
    for key, want in {"hidden_size": 32, "state_size": 8, "num_hidden_layers": 2, "expand": 2, "conv_kernel": 4,
                      "n_groups": 2, "head_dim": 8, "num_heads": 8, "chunk_size": 4, "vocab_size": 64,
                      "use_bias": False, "use_conv_bias": True, "layer_norm_epsilon": 1e-5}.items():
        assert m2[key] == want, key
    m1 = export_hf(tiny("mmm"), tmp_path / "m1", eos_token_id=5)
    assert (m1["model_type"], m1["state_size"], m1["time_step_rank"], m1["intermediate_size"]) == ("mamba", 4, 2, 64)
    assert json.loads((tmp_path / "m1" / "config.json").read_text())["eos_token_id"] == 5


def test_export_from_a_checkpoint_folder(tmp_path):
    model = tiny("MM")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model.model_config.save(ckpt / "config.json")
    mt.save_safetensors(str(ckpt / "model.safetensors"), model.parameters())
    export_hf(str(ckpt), tmp_path / "hf")
    _, tensors = import_hf(tmp_path / "hf")
    np.testing.assert_array_equal(np.asarray(tensors["layers.1.mixer.A_log"]),
                                  np.asarray(model.parameters()["layers.1.mixer.A_log"]))


def test_files_load_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = tiny("mm")
    export_hf(model, tmp_path)
    loaded = st.load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(loaded["backbone.layers.1.mixer.x_proj.weight"],
                                  np.asarray(model.parameters()["layers.1.mixer.x_proj.weight"]))
    assert len(loaded) == len(model.parameters())


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="hybrid"):
        export_hf(tiny("Mm"), tmp_path)
    with pytest.raises(ValueError, match="family"):
        export_hf(tiny("MM"), tmp_path, "mamba")
    export_hf(tiny("MM"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, match in (({"model_type": "nemotron_h"}, "model_type"), ({"use_bias": True}, "use_bias"),
                          ({"time_step_limit": [0.0, 1.0]}, "time_step_limit")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            import_hf(tmp_path)


@pytest.mark.parametrize("pattern", ["MM", "mm"])
def test_logits_match_transformers(tmp_path, pattern):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tiny(pattern)
    export_hf(model, tmp_path)
    cls = transformers.MambaForCausalLM if pattern == "mm" else transformers.Mamba2ForCausalLM
    hf = cls.from_pretrained(str(tmp_path), torch_dtype=torch.float32).eval()
    tokens = np.random.default_rng().integers(0, 64, (2, 9))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens)).logits.numpy()
    ours = np.asarray(model.logits(tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
