"""Training checkpoints: folders written atomically, the newest named by ``latest``.

A checkpoint is ``OUT/step_00000123/`` holding

- ``config.json``: the model's :class:`ModelConfig` JSON,
- ``model.safetensors``: the parameters by name,
- ``optimizer.safetensors``: the AdamW moments ``exp_avg`` and ``exp_avg_sq`` as flat
  tensors in the layout of ``Model.flat_parameters`` (metadata: the optimizer's step),
- ``trainer_state.json``: step, consumed tokens, the data loader's position, the schedule,
  the seed, the training arguments and ``format_version``.

Everything is written into ``OUT/step_N.tmp-XXXX`` and the folder is renamed into place
only when complete, so a folder named ``step_N`` is always whole; a crash mid-save leaves
at most a ``.tmp-`` folder, which the next save removes. Old checkpoints are renamed out of
the ``step_N`` names before they are deleted, so a crash mid-removal leaves an ``.old-``
folder, which the next save removes too. ``OUT/latest`` (a text file with
the folder's name) is replaced atomically after the rename; :func:`find_latest` falls
back to the highest complete step when ``latest`` names a missing folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional

from ._C import load_safetensors, save_safetensors, save_safetensors_sharded

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^step_\d+\.(tmp|old)-")


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoint folders in ``out_dir``, by step."""
    found = []
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            m = _STEP_DIR.match(name)
            if m and os.path.isfile(os.path.join(out_dir, name, "trainer_state.json")):
                found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def find_latest(out_dir: str) -> Optional[str]:
    """The newest complete checkpoint of ``out_dir`` (``latest`` first), or None."""
    try:
        with open(os.path.join(out_dir, "latest"), encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(out_dir, name)
        if _STEP_DIR.match(name) and os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
    except OSError:
        pass
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_checkpoint(out_dir: str, model, trainer, config, state: Dict[str, Any], keep_last: int = 2,
                    _fail_after: Optional[str] = None, max_shard_bytes: int = 5 << 30) -> str:
    """Writes the checkpoint of ``trainer.step_count`` atomically; returns its path.

    ``state`` holds the caller's part of trainer_state.json (data loader position, seed,
    args, ...). Older checkpoints beyond ``keep_last`` (0 keeps all) are removed after the
    new one is in place. ``_fail_after`` (tests) raises after writing that file, to check
    that an interrupted save leaves nothing behind.
    """
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # leftovers of a save or a removal that crashed
        path = os.path.join(out_dir, name)
        if _TMP_DIR.match(name):
            shutil.rmtree(path, ignore_errors=True)
        elif _STEP_DIR.match(name) and not os.path.isfile(os.path.join(path, "trainer_state.json")):
            _discard(path)  # a step folder is whole or was being removed in place
    step = trainer.step_count
    name = checkpoint_name(step)
    final = os.path.join(out_dir, name)
    tmp = tempfile.mkdtemp(prefix=name + ".tmp-", dir=out_dir)
    try:
        def written(what: str) -> None:
            if _fail_after == what:
                raise RuntimeError(f"simulated failure after writing {what}")

        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        written("config.json")
        # One model.safetensors, or model-0000K-of-0000N shards + model.safetensors.index.json
        # past the shard size (the Hugging Face convention for large checkpoints).
        save_safetensors_sharded(tmp, model.parameters(), {"format": "mambatron", "step": str(step)},
                                 max_shard_bytes=max_shard_bytes, stem="model")
        written("model.safetensors")
        opt = trainer.optimizer
        save_safetensors(os.path.join(tmp, "optimizer.safetensors"),
                         {"exp_avg": opt.exp_avg, "exp_avg_sq": opt.exp_avg_sq},
                         {"format": "mambatron", "optimizer": "adamw", "step_count": str(opt.step_count)})
        written("optimizer.safetensors")
        full = {"format_version": FORMAT_VERSION, "step": step, "consumed_tokens": trainer.consumed_tokens,
                "skipped_steps": trainer.skipped_steps, "optimizer_step": opt.step_count,
                "trainer_options": trainer.options, **state}
        _write_json(os.path.join(tmp, "trainer_state.json"), full)
        written("trainer_state.json")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _fsync_dir(tmp)
        old = _set_aside(final) if os.path.exists(final) else None  # the same step saved again
        os.rename(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = os.path.join(out_dir, "latest.tmp")
    with open(latest_tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(out_dir, "latest"))
    _fsync_dir(out_dir)
    if keep_last > 0:
        for _, path in list_checkpoints(out_dir)[:-keep_last]:
            if path != final:
                _discard(path)
    return final


def _set_aside(path: str) -> str:
    """Moves the folder ``path`` into a new ``NAME.old-XXXX`` folder beside it (one atomic
    rename, so no ``step_N`` name ever holds a partial folder); returns that folder."""
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(prefix=name + ".old-", dir=parent)
    os.rename(path, os.path.join(old, name))
    return old


def _discard(path: str) -> None:
    shutil.rmtree(_set_aside(path), ignore_errors=True)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The parts of a checkpoint folder: config (dict), parameters, exp_avg, exp_avg_sq,
    optimizer_step and state (trainer_state.json)."""
    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: trainer_state.json has format_version {version!r}, this mambatron reads "
                         f"{FORMAT_VERSION}")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    opt = load_safetensors(os.path.join(path, "optimizer.safetensors"))
    if set(opt) != {"exp_avg", "exp_avg_sq"}:
        raise ValueError(f"{path}/optimizer.safetensors: expected tensors exp_avg and exp_avg_sq, got {sorted(opt)}")
    return {"config": config, "parameters": load_safetensors(path, stem="model"),  # one file or shards
            "exp_avg": opt["exp_avg"], "exp_avg_sq": opt["exp_avg_sq"],
            "optimizer_step": int(state["optimizer_step"]), "state": state}


def restore(trainer, model, ckpt: Dict[str, Any]) -> None:
    """Loads a :func:`load_checkpoint` result into a model and its trainer."""
    model.load_parameters(ckpt["parameters"])
    trainer.optimizer.load_state(ckpt["exp_avg"], ckpt["exp_avg_sq"], ckpt["optimizer_step"])
    s = ckpt["state"]
    trainer.set_progress(int(s["step"]), int(s["consumed_tokens"]), int(s.get("skipped_steps", 0)))
