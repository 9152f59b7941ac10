"""Test-harness shim for a real CPU run of Chroma with a tiny random model (tests/e2e/test_chroma_e2e.py), put on
PYTHONPATH only there; never used by lorawizard itself.

sd-scripts builds FLUX.1 with as many blocks as the file has (flux_utils.analyze_checkpoint_state), which is how the
e2e setup trains a 1 double + 1 single block FLUX. It builds Chroma from fixed parameters instead
(library/chroma_models.py `chroma_params`: 19 double + 38 single blocks, hidden size 3072), so a small Chroma file
would leave 55 blocks on the meta device and the first step would fail. With `LORAWIZARD_TINY_CHROMA_BLOCKS=D,S` in
the environment, this shim replaces `chroma_params` by the same parameters with D double and S single blocks as soon
as `library.chroma_models` is imported (an import hook: the module's code runs unchanged, then its `chroma_params` is
swapped; flux_utils.load_flow_model reads it at call time). Every other size stays Chroma's, so the file made by
make_tiny_chroma.py (the same parameters) loads with "All keys matched". Nothing of sd-scripts is changed; without
the variable the shim does nothing.
"""
import os

_BLOCKS = os.environ.get("LORAWIZARD_TINY_CHROMA_BLOCKS", "")

if _BLOCKS:
    import dataclasses
    import importlib.abc
    import importlib.machinery
    import sys

    _DOUBLE, _SINGLE = (int(part) for part in _BLOCKS.split(","))

    class _TinyChroma(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != "library.chroma_models":
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                module.chroma_params = dataclasses.replace(module.chroma_params, depth=_DOUBLE,
                                                           depth_single_blocks=_SINGLE)
                print(f"tiny-chroma shim: chroma_params with {_DOUBLE} double + {_SINGLE} single blocks", flush=True)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _TinyChroma())
