"""ModelConfig, presets and ``mambatron info``: JSON, overrides, validation, sizes."""
import json
import math

import pytest

from mambatron.config import (AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig,
                              parse_assignment)
from mambatron.pattern import allocate_layers
from mambatron.presets import get_preset, list_presets

# ---- parameter counts from MODELS.md §2, written out by hand ---------------------------
D, V = 4096, 256000
MAMBA2_8B = (D                                     # pre-norm
             + D * (2 * 8192 + 2 * 8 * 128 + 128)  # in_proj: z | x B C | dt
             + (8192 + 2 * 8 * 128) * 4            # conv1d weight
             + (8192 + 2 * 8 * 128)                # conv1d bias
             + 3 * 128                             # dt_bias, A_log, D (one per head)
             + 8192                                # gated grouped RMSNorm
             + 8192 * D)                           # out_proj
GQA_8B = D + D * (32 + 2 * 8) * 128 + 32 * 128 * D
GELU_MLP_8B = D + 2 * D * 16384
MAMBA1_8B = (D + D * 2 * 8192 + 8192 * 4 + 8192 + 8192 * (256 + 2 * 16) + 256 * 8192 + 8192
             + 8192 * 16 + 8192 + 8192 * D)
LN1P = 2 * D  # weight and bias
MHA_8B = LN1P + D * 3 * 4096 + 4096 * D
RELU2_MLP_8B = LN1P + 2 * D * 16384


def test_hybrid_8b_parameters():
    p = get_preset("hybrid-8b").parameter_count()
    assert p["mamba2"] == 24 * MAMBA2_8B
    assert p["attention"] == 4 * GQA_8B
    assert p["mlp"] == 28 * GELU_MLP_8B
    assert p["embedding"] == p["output"] == V * D and p["final_norm"] == D and p["mamba1"] == 0
    assert p["total"] == 2 * V * D + 24 * MAMBA2_8B + 4 * GQA_8B + 28 * GELU_MLP_8B + D
    assert abs(p["total"] / 8.65e9 - 1) < 0.01


def test_mamba2_8b_parameters():
    p = get_preset("mamba2-8b").parameter_count()
    assert p["total"] == 2 * V * D + 56 * MAMBA2_8B + D
    assert abs(p["total"] / 8.24e9 - 1) < 0.01


def test_transformer_8b_parameters():
    p = get_preset("transformer-8b").parameter_count()
    assert p["total"] == 2 * V * D + 32 * (MHA_8B + RELU2_MLP_8B) + LN1P
    assert abs(p["total"] / 8.54e9 - 1) < 0.01


def test_mamba_8b_parameters():
    p = get_preset("mamba-8b").parameter_count()
    assert p["mamba1"] == 56 * MAMBA1_8B and p["total"] == 2 * V * D + 56 * MAMBA1_8B + D


def test_shapes_match_counts_for_every_preset():
    for name in list_presets():
        cfg = get_preset(name)
        shapes = cfg.parameter_shapes()
        assert sum(math.prod(s) for s in shapes.values()) == cfg.parameter_count()["total"], name
        assert ("lm_head.weight" in shapes) == (not cfg.tie_embeddings)


def test_sublayer_shapes():
    cfg = get_preset("tiny-hybrid")  # d 128, Mamba-2 p 32 n 16 g 2, attention 4q/2kv x 32, MLP 512
    m2 = cfg.sublayer_shapes("M")
    assert m2["mixer.in_proj.weight"] == (2 * 256 + 2 * 2 * 16 + 8, 128)
    assert m2["mixer.conv1d.weight"] == (256 + 64, 1, 4) and m2["mixer.A_log"] == (8,)
    m1 = cfg.sublayer_shapes("m")
    assert m1["mixer.x_proj.weight"] == (8 + 32, 256) and m1["mixer.dt_proj.weight"] == (256, 8)
    assert m1["mixer.A_log"] == (256, 16) and m1["mixer.dt_proj.bias"] == (256,)
    assert cfg.sublayer_shapes("*")["mixer.qkv_proj.weight"] == ((4 + 2 * 2) * 32, 128)
    assert cfg.sublayer_shapes("-")["mixer.fc1.weight"] == (512, 128)
    swiglu = cfg.replace(mlp={"activation": "swiglu"})
    assert swiglu.sublayer_shapes("-")["mixer.fc1.weight"] == (1024, 128)
    assert swiglu.parameter_count()["mlp"] == cfg.parameter_count()["mlp"] + 2 * 512 * 128
    with pytest.raises(ValueError, match="unknown sublayer symbol 'x'"):
        cfg.sublayer_shapes("x")


def test_tying_and_norm_kind_change_counts():
    cfg = get_preset("tiny-mamba")
    tied = cfg.replace(tie_embeddings=True).parameter_count()
    assert tied["output"] == 0 and tied["total"] == cfg.parameter_count()["total"] - 256 * 128
    ln = cfg.replace(norm="layernorm1p").parameter_count()
    assert ln["total"] == cfg.parameter_count()["total"] + 5 * 128  # 4 pre-norms + final norm gain a bias


def test_dt_rank_auto_and_explicit():
    cfg = get_preset("mamba-8b")
    assert cfg.mamba1_dt_rank == 256
    assert get_preset("tiny-mamba").replace(d_model=100).mamba1_dt_rank == 7  # ceil(100 / 16)
    assert cfg.replace(mamba1={"dt_rank": 64}).mamba1_dt_rank == 64


# ---- memory ---------------------------------------------------------------------------
def test_memory_estimate_parts():
    cfg = get_preset("hybrid-8b")
    total = cfg.parameter_count()["total"]
    mem = cfg.memory_estimate(batch=2, seq_len=1024)
    t, i = mem["training"], mem["inference"]
    kept = 24 * (3 * 128 + 8192 + D) + 32 * D + D  # A_log D dt_bias, gated norms, pre-norms, final norm
    assert t["master_weights"] == t["gradients"] == 4 * total and t["optimizer"] == 8 * total
    assert t["weights"] == 2 * (total - kept)
    assert i["weights"] == 2 * (total - kept) + 4 * kept
    conv_state, ssm_state = (8192 + 2048) * 3 * 2, 128 * 64 * 128 * 4
    kv_cache = 2 * 8 * 128 * 1024 * 2
    assert i["state"] == 2 * (24 * (conv_state + ssm_state) + 4 * kv_cache)
    assert t["total"] == sum(v for k, v in t.items() if k != "total")
    assert i["total"] == sum(v for k, v in i.items() if k != "total")
    # Activations grow with tokens; the fixed part is the loss block of 4096 x 32768 fp32 logits.
    loss_block = 4096 * 32768 * 4
    a1 = cfg.memory_estimate(1, 4096)["training"]["activations"] - loss_block
    a2 = cfg.memory_estimate(2, 4096)["training"]["activations"] - loss_block
    assert a1 > 0 and a2 == 2 * a1


def test_memory_estimate_activations_by_hand():
    # tiny-transformer: d 128, 4 heads of 32 (MHA), MLP 512 squared ReLU, vocab 256, bf16.
    attn = 2 * 128 + (4 + 2 * 4) * 32 + 4 * 32 + 4  # residual + normed input, qkv, attention out, lse
    mlp = 2 * 128 + 512 + 512                       # residual + normed input, fc1 out, activation out
    mem = get_preset("tiny-transformer").memory_estimate(batch=2, seq_len=10)
    assert mem["training"]["activations"] == 20 * 2 * (4 * attn + 4 * mlp + 2 * 128) + 20 * 256 * 4
    assert mem["inference"]["activations"] == 20 * 2 * max(attn, mlp) + 2 * 256 * 4


def test_memory_estimate_full_precision_and_errors():
    cfg = get_preset("tiny-transformer").replace(dtype="f32")
    assert cfg.memory_estimate()["training"]["weights"] == 0  # master weights are the compute weights
    assert get_preset("tiny-mamba").memory_estimate(3, 7)["inference"]["state"] == 3 * 4 * (256 * 3 * 2 + 256 * 16 * 4)
    for bad in ({"batch": 0}, {"seq_len": -1}, {"batch": 1.5}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            cfg.memory_estimate(**bad)


# ---- presets --------------------------------------------------------------------------
def test_preset_names():
    names = list_presets()
    for required in ("hybrid-8b", "mamba2-8b", "transformer-8b", "mamba-8b", "hybrid-800m",
                     "tiny-hybrid", "tiny-mamba2", "tiny-mamba", "tiny-transformer"):
        assert required in names
    for family in ("hybrid", "mamba2", "mamba", "transformer"):
        for size, (layers, d) in {"130m": (24, 768), "370m": (48, 1024), "1.3b": (48, 2048),
                                  "2.7b": (64, 2560)}.items():
            cfg = get_preset(f"{family}-{size}")
            assert len(cfg.layers) == layers and cfg.d_model == d


def test_preset_contents():
    assert get_preset("hybrid-8b").layers == allocate_layers(56, 0.08, 0.5)
    assert get_preset("hybrid-800m").layers == allocate_layers(48, 0.08, 0.5)
    h = get_preset("hybrid-800m")
    assert (h.d_model, h.attention.num_heads, h.attn_num_kv_heads) == (1024, 16, 8)
    t = get_preset("transformer-8b")
    assert t.layers == "*-" * 32 and t.norm == "layernorm1p" and t.mlp.activation == "squared_relu"
    assert (t.attention.num_heads, t.attn_num_kv_heads, t.attn_head_dim) == (32, 32, 128)
    assert t.attention.rotary_fraction == 0.5 and t.attention.rope_base == 10000
    assert get_preset("hybrid-8b").attention.rotary_fraction == 0.0  # NoPE
    m = get_preset("mamba2-8b").mamba2
    assert (m.expand, m.head_dim, m.d_state, m.n_groups, m.d_conv) == (2, 64, 128, 8, 4)
    assert get_preset("mamba-8b").mamba1.d_state == 16
    for name in list_presets():
        if name.startswith("tiny-"):
            cfg = get_preset(name)
            assert cfg.d_model <= 256 and cfg.vocab_size == 256 and len(cfg.layers) <= 8
    assert set(get_preset("tiny-hybrid").layers) == set("Mm*-")


def test_get_preset_errors_and_freshness():
    with pytest.raises(ValueError, match="unknown preset 'hybrd-8b'. Did you mean hybrid-8b") as e:
        get_preset("hybrd-8b")
    assert "tiny-transformer" in str(e.value)  # the full list
    with pytest.raises(ValueError, match="unknown preset 'gpt-5'.* Presets: hybrid-8b"):
        get_preset("gpt-5")
    assert get_preset(" Hybrid-8B ").name == "hybrid-8b"
    a = get_preset("tiny-hybrid")
    a.mamba2.d_state = 1
    assert get_preset("tiny-hybrid").mamba2.d_state == 16


# ---- JSON -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_presets())
def test_json_round_trip(name, tmp_path):
    cfg = get_preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "config.json"
    cfg.save(path)
    assert ModelConfig.load(path) == cfg
    assert ModelConfig.load(str(tmp_path)) == cfg  # a folder holding config.json
    assert ModelConfig.load(json.loads(path.read_text())) == cfg
    assert ModelConfig.from_json(cfg.to_dict()) == cfg


def test_from_dict_defaults_and_errors():
    cfg = ModelConfig.from_dict({"num_layers": 10, "attention_ratio": 0.1, "mlp_ratio": 0.4, "d_model": 256,
                                 "attention": {"num_heads": 4}, "mamba2": {"n_groups": 1}})
    assert cfg.layers == allocate_layers(10, 0.1, 0.4) and cfg.mamba2.d_state == 128
    with pytest.raises(ValueError, match="unknown config key 'd_modle'; did you mean 'd_model'"):
        ModelConfig.from_dict({"pattern": "M", "d_modle": 5})
    with pytest.raises(ValueError, match="unknown config key mamba2.'dstate'"):
        ModelConfig.from_dict({"pattern": "M", "mamba2": {"dstate": 5}})
    with pytest.raises(ValueError, match="mamba2 = 3 must be an object"):
        ModelConfig.from_dict({"pattern": "M", "mamba2": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{pattern: M}")
    with pytest.raises(ValueError, match="must be a JSON object"):
        ModelConfig.from_json("[1, 2]")


# ---- replace and override -------------------------------------------------------------
def test_replace():
    base = get_preset("tiny-hybrid")
    new = base.replace(d_model=256, n_groups=4, mamba2={"d_state": 32}, mlp=MLPConfig(ffn_hidden=100))
    assert (new.d_model, new.mamba2.n_groups, new.mamba2.d_state, new.mlp.ffn_hidden) == (256, 4, 32, 100)
    assert new.mamba2.head_dim == 32  # other section fields kept
    assert (base.d_model, base.mamba2.n_groups, base.mamba2.d_state) == (128, 2, 16)  # unchanged
    with pytest.raises(ValueError, match="'d_state' is ambiguous; use one of mamba2.d_state, mamba1.d_state"):
        base.replace(d_state=8)
    with pytest.raises(ValueError, match="must divide"):
        base.replace(d_model=100)  # validated


def test_override_types():
    base = get_preset("tiny-hybrid")
    cfg = base.override("d_model=256", "mamba2.d_state=64", "norm_eps=1e-6", "tie_embeddings=yes",
                        "activation=squared_relu", " rotary_fraction = 0.5 ", "mamba1.dt_rank=12",
                        "attention.num_kv_heads=none", "name=mine")
    assert cfg.d_model == 256 and isinstance(cfg.d_model, int)
    assert cfg.mamba2.d_state == 64 and cfg.norm_eps == 1e-6 and cfg.tie_embeddings is True
    assert cfg.mlp.activation == "squared_relu" and cfg.attention.rotary_fraction == 0.5
    assert cfg.mamba1.dt_rank == 12 and cfg.attention.num_kv_heads is None and cfg.name == "mine"
    assert cfg.override("mamba1.dt_rank=auto").mamba1.dt_rank == "auto"
    for text, value in (("true", True), ("False", False), ("on", True), ("0", False), ("NO", False)):
        assert base.override(f"tie_embeddings={text}").tie_embeddings is value
    assert base.override("pattern=MM*-").layers == "MM*-"
    assert base.override("rope_base=500000").attention.rope_base == 500000.0


@pytest.mark.parametrize("text, message", [
    ("d_model", "must have the form key=value"),
    ("=4", "has no key"),
    ("d_model=big", "d_model = 'big' is not a valid int"),
    ("d_model=2.5", "d_model = '2.5' is not a valid int"),
    ("norm_eps=small", "norm_eps = 'small' is not a valid float"),
    ("tie_embeddings=maybe", "tie_embeddings = 'maybe' is not a valid bool"),
    ("d_model=none", "d_model = 'none' is not a valid int"),
    ("dmodel=4", "unknown config key 'dmodel'; did you mean 'd_model'"),
    ("mamba3.d_state=4", "unknown config key 'mamba3.d_state'"),
    ("mamba2=4", "'mamba2' is a section"),
    ("expand=4", "ambiguous"),
    ("head_dim=32", "use one of mamba2.head_dim, attention.head_dim"),
])
def test_override_errors(text, message):
    with pytest.raises(ValueError, match=message):
        get_preset("tiny-hybrid").override(text)


def test_parse_assignment():
    assert parse_assignment("a.b = c=d") == ("a.b", "c=d")


# ---- validation -----------------------------------------------------------------------
@pytest.mark.parametrize("preset, changes, message", [
    ("tiny-hybrid", {"d_model": 0}, "d_model = 0 must be an integer >= 1"),
    ("tiny-hybrid", {"vocab_size": 2.5}, "vocab_size = 2.5 must be an integer"),
    ("tiny-hybrid", {"norm": "batchnorm"}, "norm = 'batchnorm' is not one of rmsnorm, layernorm1p"),
    ("tiny-hybrid", {"norm_eps": 0.0}, "norm_eps = 0.0 must be a positive"),
    ("tiny-hybrid", {"init_std": -1.0}, "init_std = -1.0 must be a positive"),
    ("tiny-hybrid", {"dtype": "f8"}, "dtype = 'f8' is not one of"),
    ("tiny-hybrid", {"param_dtype": "int8"}, "param_dtype = 'int8' is not one of"),
    ("tiny-hybrid", {"tie_embeddings": "yes"}, "tie_embeddings = 'yes' must be true or false"),
    ("tiny-hybrid", {"name": 3}, "name = 3 must be a string"),
    ("tiny-hybrid", {"pattern": "MMx"}, "invalid symbol"),
    ("tiny-hybrid", {"num_layers": 5}, "pattern has 6 sublayers but num_layers = 5"),
    ("tiny-hybrid", {"attention_ratio": 0.5}, "has 2 'M', 1 'm', 1 '\\*', 2 '-'"),
    ("tiny-hybrid", {"pattern": None}, "give either pattern or num_layers"),
    ("tiny-hybrid", {"pattern": None, "num_layers": 8, "mlp_ratio": 1.2}, "mlp_ratio = 1.2 is out of range"),
    ("tiny-mamba2", {"d_model": 100}, "mamba2.head_dim = 32 must divide the Mamba-2 inner width 200"),
    ("tiny-mamba2", {"n_groups": 3}, "mamba2.n_groups = 3 must divide the Mamba-2 head count 8"),
    ("tiny-mamba2", {"mamba2": {"d_state": 0}}, "mamba2.d_state = 0 must be an integer >= 1"),
    ("tiny-mamba2", {"chunk_size": 0}, "mamba2.chunk_size = 0"),
    ("tiny-mamba2", {"mamba2": {"expand": 1.5}}, "mamba2.expand = 1.5"),
    ("tiny-mamba2", {"mamba2": {"dt_min": 0.5}}, "mamba2.dt_max = 0.1 must be at least mamba2.dt_min = 0.5"),
    ("tiny-mamba2", {"mamba2": {"dt_init_floor": 0.0}}, "mamba2.dt_init_floor = 0.0"),
    ("tiny-mamba2", {"A_init_max": 0.5}, "mamba2.A_init_max = 0.5 must be at least mamba2.A_init_min = 1.0"),
    ("tiny-mamba2", {"A_init_min": -1.0}, "mamba2.A_init_min = -1.0 must be a positive"),
    ("tiny-mamba", {"dt_rank": "fast"}, "mamba1.dt_rank = 'fast' must be an integer >= 1 or \"auto\""),
    ("tiny-mamba", {"dt_rank": 0}, "mamba1.dt_rank = 0"),
    ("tiny-mamba", {"mamba1": {"d_conv": 0}}, "mamba1.d_conv = 0"),
    ("tiny-mamba", {"mamba1": {"dt_max": -1.0}}, "mamba1.dt_max = -1.0"),
    ("tiny-transformer", {"num_heads": 3, "attention": {"head_dim": None}},
     "attention.num_heads = 3 must divide d_model = 128"),
    ("tiny-transformer", {"num_kv_heads": 3}, "attention.num_kv_heads = 3 must divide attention.num_heads = 4"),
    ("tiny-transformer", {"num_kv_heads": 0}, "attention.num_kv_heads = 0 must be an integer >= 1"),
    ("tiny-transformer", {"attention": {"head_dim": 0}}, "attention.head_dim = 0"),
    ("tiny-transformer", {"rotary_fraction": 1.5}, "attention.rotary_fraction = 1.5 must lie in \\[0, 1\\]"),
    ("tiny-transformer", {"rotary_fraction": 0.3}, "gives 9.6 rotary dims of head_dim 32"),
    ("tiny-transformer", {"rotary_fraction": 1 / 32}, "gives 1.0 rotary dims"),
    ("tiny-transformer", {"rope_base": 0.0}, "attention.rope_base = 0.0"),
    ("tiny-transformer", {"activation": "relu"}, "mlp.activation = 'relu' is not one of gelu, squared_relu, swiglu"),
    ("tiny-transformer", {"ffn_hidden": 0}, "mlp.ffn_hidden = 0"),
])
def test_validation_errors(preset, changes, message):
    with pytest.raises(ValueError, match=message):
        get_preset(preset).replace(**changes)


def test_validation_checks_only_kinds_in_use():
    # Mamba-2 options that could not work at this width are fine in a model without Mamba-2.
    cfg = get_preset("tiny-transformer").replace(mamba2={"n_groups": 3}, mamba1={"dt_rank": 0})
    assert cfg.mamba2.n_groups == 3
    with pytest.raises(ValueError, match="mamba2.n_groups = 3"):
        cfg.replace(pattern="M-")


def test_section_types_checked():
    cfg = get_preset("tiny-mamba2")
    cfg.mamba2 = {"d_state": 4}
    with pytest.raises(ValueError, match="mamba2 = .* must be a Mamba2Config"):
        cfg.validate()


def test_default_sections():
    cfg = ModelConfig(pattern="Mm*-", d_model=512)
    assert cfg.validate() is cfg
    assert cfg.mamba2 == Mamba2Config() and cfg.mamba1 == Mamba1Config() and cfg.attention == AttentionConfig()
    assert (cfg.tie_embeddings, cfg.init_std, cfg.norm, cfg.norm_eps) == (False, 0.02, "rmsnorm", 1e-5)
    assert (cfg.mamba2.chunk_size, cfg.attention.rope_base, cfg.mlp.activation) == (128, 10000.0, "gelu")
    assert (cfg.attn_head_dim, cfg.attn_num_kv_heads, cfg.ffn_hidden) == (16, 32, 2048)
    assert (cfg.mamba2_d_inner, cfg.mamba2_num_heads, cfg.mamba2_conv_dim) == (1024, 16, 1024 + 2048)


# ---- mambatron info (needs the compiled package for the CLI module) -------------------
def test_cli_info_preset(capsys):
    from mambatron.cli import main
    assert main(["info", "hybrid-8b"]) == 0
    out = capsys.readouterr().out
    assert "M-M-M--M-M*-" in out and "Mamba-2 24, attention 4, MLP 28" in out
    total = get_preset("hybrid-8b").parameter_count()["total"]
    assert f"{total:,}" in out and "training memory (batch 1 x 4096 tokens" in out and "inference memory" in out


def test_cli_info_json_set_and_batch(capsys):
    from mambatron.cli import main
    assert main(["info", "tiny-hybrid", "--set", "d_model=256", "--set", "mamba2.d_state=32", "--json",
                 "--batch", "3", "--seq-len", "64"]) == 0
    res = json.loads(capsys.readouterr().out)
    cfg = get_preset("tiny-hybrid").override("d_model=256", "mamba2.d_state=32")
    assert res["parameters"] == cfg.parameter_count() and res["pattern"] == "Mm*-M-"
    assert res["memory_bytes"] == cfg.memory_estimate(3, 64)
    assert ModelConfig.from_dict(res["config"]) == cfg


def test_cli_info_config_file(capsys, tmp_path):
    from mambatron.cli import main
    get_preset("tiny-mamba").replace(name=None).save(tmp_path / "config.json")
    assert main(["info", str(tmp_path / "config.json")]) == 0
    assert "[m]x4" in capsys.readouterr().out
    assert main(["info", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layer_counts"]["mamba1"] == 4


def test_cli_info_errors(capsys):
    from mambatron.cli import main
    assert main(["info", "hybrd-8b"]) == 2
    assert "Did you mean hybrid-8b" in capsys.readouterr().err
    assert main(["info", "tiny-hybrid", "--set", "d_state=3"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "--set", "d_model=4"])


def test_toml_config_files(tmp_path):
    import sys

    if sys.version_info < (3, 11):
        pytest.importorskip("tomli")
    path = tmp_path / "model.toml"
    path.write_text('pattern = "M*-"\nd_model = 64\nvocab_size = 256\n\n[attention]\nnum_heads = 4\n\n'
                    '[mamba2]\nhead_dim = 16\nd_state = 16\nn_groups = 1\n')
    cfg = ModelConfig.load(path)
    assert cfg.layers == "M*-" and cfg.d_model == 64 and cfg.mamba2.head_dim == 16 and cfg.attention.num_heads == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("pattern = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        ModelConfig.load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('pattern = "M"\nd_modle = 64\n')
    with pytest.raises(ValueError, match="d_modle"):
        ModelConfig.load(typo)
