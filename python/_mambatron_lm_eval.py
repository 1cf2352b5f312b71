"""Lets the ``lm_eval`` command find mambatron's model: ``lm_eval --model mambatron
--model_args pretrained=PATH ...``. The harness has no plugin discovery, and its command
imports nothing of ours, so ``_mambatron_lm_eval.pth`` (installed with this file in
site-packages) imports this module when Python starts. It imports nothing else and only
watches for ``lm_eval.models``, the harness's list of models; when that is loaded it adds
"mambatron" as a lazy entry ("mambatron.eval.harness:HarnessLM"), so mambatron itself is
imported only when that model is asked for.
"""
import sys

_TARGET = "mambatron.eval.harness:HarnessLM"


def _register(models_module):
    models_module.MODEL_MAPPING.setdefault("mambatron", _TARGET)
    from lm_eval.api.registry import model_registry

    if "mambatron" not in model_registry:
        model_registry.register("mambatron", target=_TARGET)


class _Finder:
    """A meta-path finder that answers only for lm_eval.models: it takes the normal spec
    and runs _register after the module has run."""

    mambatron_lm_eval = True

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "lm_eval.models":
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            try:
                _register(module)
            except Exception as e:  # a harness whose registry has changed: lm_eval still works, without us
                print(f"mambatron: could not register with lm_eval: {e!r}", file=sys.stderr)

        loader.exec_module = exec_module
        return spec


if not any(getattr(f, "mambatron_lm_eval", False) for f in sys.meta_path):  # once, even if imported again
    sys.meta_path.insert(0, _Finder)
