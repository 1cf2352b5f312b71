"""The lm-evaluation-harness runs a local multiple-choice task on a trained tiny model,
through its own entry points (``lm_eval.simple_evaluate`` and the ``lm_eval`` command
with ``--model mambatron``), and its scores equal a direct computation from the model's
log-likelihoods. Offline: the task's questions are a JSONL file written here.
Skipped when lm_eval is not installed (``pip install lm_eval``; it needs no torch)."""
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

import mambatron as mt  # noqa: E402
from mambatron.eval.harness import log_softmax  # noqa: E402
from mambatron.hf import load_model  # noqa: E402
from mambatron.train import TrainArgs, train  # noqa: E402

TASK = "mambatron_tiny_colors"
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
          "cloud": "gray", "orange": "orange", "lemon": "yellow", "leaf": "green", "night": "black", "milk": "white"}
TINY = ["d_model=32", "mlp.ffn_hidden=64", "attention.num_heads=2", "attention.num_kv_heads=1",
        "attention.head_dim=16", "mamba2.head_dim=16", "mamba2.n_groups=1", "mamba2.d_state=8", "mamba1.d_state=4"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
HOOK_DIR = Path(__file__).resolve().parents[2] / "python"  # _mambatron_lm_eval.py and .pth in the source tree


def question(thing):
    return f"Question: What color is the {thing}?\nAnswer:"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Twelve questions of four choices (JSONL), a task YAML that reads them, and a
    checkpoint of a tiny byte-level hybrid trained for 100 steps on answered questions."""
    root = tmp_path_factory.mktemp("lm_eval")
    gen = random.Random(0)
    names = sorted(set(COLORS.values()))
    docs = []
    for thing, color in COLORS.items():
        choices = gen.sample([n for n in names if n != color], 3) + [color]
        gen.shuffle(choices)
        docs.append({"question": f"What color is the {thing}?", "thing": thing, "choices": choices,
                     "label": choices.index(color)})
    (root / "questions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "tasks").mkdir()
    # doc_to_text renders question(thing); the harness puts target_delimiter " " before each choice
    (root / "tasks" / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "questions.jsonl"}
  cache_dir: {root / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    prefix = str(root / "corpus")
    with mt.IndexedDatasetWriter(prefix, 1) as w:
        for _ in range(200):
            thing = gen.choice(sorted(COLORS))
            text = f"{question(thing)} {COLORS[thing]}\n"
            w.add_document(np.frombuffer(text.encode(), np.uint8).astype(np.int64))
    summary = train(TrainArgs(model="tiny-hybrid", set=TINY, data=prefix, seq_len=64, micro_batch=8, steps=100,
                              lr=1e-2, min_lr=1e-3, warmup=5, eval_every=0, eval_fraction=0.0, out=str(root / "run"),
                              progress=False, plot=False, sample_tokens=0, seed=3, log=["jsonl"], device="cpu"))
    return {"root": root, "docs": docs, "run": str(root / "run"), "checkpoint": summary["checkpoint"]}


def direct(setup):
    """Each choice's (log-likelihood, is_greedy) from one forward pass over context + " " +
    choice (bytes), and acc / acc_norm as the harness defines them (acc_norm divides by the
    choice's length in characters)."""
    model = load_model(setup["checkpoint"])
    lls, acc, acc_norm = [], [], []
    for doc in setup["docs"]:
        ctx = list(question(doc["thing"]).encode())
        row = []
        for choice in doc["choices"]:
            ids = ctx + list((" " + choice).encode())
            lp = log_softmax(np.asarray(model.logits(np.array([ids[:-1]], np.int32)).numpy())[0])
            t = np.arange(len(ctx), len(ids))
            targets = np.array(ids)[t]
            row.append((float(lp[t - 1, targets].sum()), bool((lp[t - 1].argmax(-1) == targets).all())))
        lls.append(row)
        ll = np.array([r[0] for r in row])
        acc.append(float(np.argmax(ll) == doc["label"]))
        acc_norm.append(float(np.argmax(ll / [len(c) for c in doc["choices"]]) == doc["label"]))
    return lls, float(np.mean(acc)), float(np.mean(acc_norm))


def check(results, samples, setup):
    lls, acc, acc_norm = direct(setup)
    got = results[TASK]
    assert got["sample_len"] == len(setup["docs"]) == 12
    assert got["acc,none"] == acc and got["acc_norm,none"] == acc_norm
    by_doc = {s["doc_id"]: s for s in samples}
    assert sorted(by_doc) == list(range(12))
    for i, want in enumerate(lls):
        s = by_doc[i]
        args = s["arguments"]  # tuples in memory; {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...} in a file
        args = [(a["arg_0"], a["arg_1"]) for a in args.values()] if isinstance(args, dict) else args
        doc = setup["docs"][i]
        assert [tuple(a) for a in args] == [(question(doc["thing"]), " " + c) for c in doc["choices"]]
        resps = [(float(lp), str(g) == "True") for lp, g in s["filtered_resps"]]  # a file holds them as strings
        assert [lp for lp, _ in resps] == pytest.approx([lp for lp, _ in want], rel=1e-5, abs=1e-5)
        assert [g for _, g in resps] == [g for _, g in want]
    return acc, acc_norm


def test_simple_evaluate_equals_direct_scores(setup, monkeypatch):
    import datasets
    import huggingface_hub.constants

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: set them too
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    manager = TaskManager(include_path=str(setup["root"] / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(model="mambatron", model_args=f"pretrained={setup['run']},batch_size=3",
                                  tasks=[TASK], task_manager=manager, log_samples=True)
    assert out["config"]["model"] == "mambatron"
    acc, acc_norm = check(out["results"], out["samples"][TASK], setup)
    print(f"simple_evaluate: acc {acc:.4f}, acc_norm {acc_norm:.4f} (chance 0.25)")
    # the built-in models are still there beside ours
    from lm_eval.api.registry import get_model

    assert get_model("dummy").__name__ == "DummyLM" and get_model("mambatron").__name__ == "HarnessLM"


def lm_eval_command():
    """The lm_eval command. A pip install puts _mambatron_lm_eval.py and its .pth in
    site-packages, and Python reads the .pth at start-up; a development build on
    PYTHONPATH has neither, so the command reads the source tree's .pth as site would."""
    spec = importlib.util.find_spec("_mambatron_lm_eval")
    if spec is not None and Path(spec.origin).with_suffix(".pth").exists():
        script = Path(sys.executable).parent / "lm_eval"
        return [str(script)] if script.exists() else [sys.executable, "-m", "lm_eval"]
    # scripts/test.sh sets this: there the package is pip-installed, and the hook must be too
    assert not os.environ.get("MAMBATRON_REQUIRE_CPP_PACKAGE"), "pip install left no _mambatron_lm_eval.pth"
    return [sys.executable, "-c", f"import site, sys; site.addsitedir({str(HOOK_DIR)!r}); sys.argv[0] = 'lm_eval'; "
                                  "from lm_eval.__main__ import cli_evaluate; cli_evaluate()"]


def test_lm_eval_command_equals_direct_scores(setup, tmp_path):
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(lm_eval_command() + [
        "--model", "mambatron", "--model_args", f"pretrained={setup['run']},batch_size=5", "--device", "cpu",
        "--tasks", TASK, "--include_path", str(setup["root"] / "tasks"), "--output_path", str(tmp_path / "out"),
        "--log_samples"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "acc_norm" in proc.stdout  # the results table
    results = list((tmp_path / "out").rglob("results_*.json"))
    samples = list((tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl"))
    assert len(results) == 1 and len(samples) == 1
    res = json.loads(results[0].read_text())
    assert res["config"]["model"] == "mambatron"
    acc, acc_norm = check(res["results"], [json.loads(line) for line in samples[0].read_text().splitlines()], setup)
    print(f"lm_eval command: acc {acc:.4f}, acc_norm {acc_norm:.4f} (chance 0.25)")


def test_start_up_hook_registers_lazily():
    """With the hook read, loading the harness's model list adds "mambatron" without
    importing mambatron; asking for it imports the adapter. The built-in models stay."""
    code = ("import sys, site; site.addsitedir(sys.argv[1]); "
            "from lm_eval.api.registry import get_model, model_registry; import lm_eval.models; "
            "assert 'mambatron' in model_registry and 'mambatron' not in sys.modules; "
            "assert get_model('mambatron').__module__ == 'mambatron.eval.harness'; "
            "assert get_model('dummy').__name__ == 'DummyLM'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(HOOK_DIR)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]
