"""`python run_offline_tokenizers.py TOKENIZER_DIR SCRIPT [ARGS...]`: run one of the trainer's scripts (by path, as
`__main__`) so that its tokenizers come from TOKENIZER_DIR, as training's `--tokenizer_cache_dir` does.

sd-scripts' inference scripts (flux_minimal_inference.py) build their tokenize strategy without a tokenizer cache
folder, so they ask the Hugging Face hub for the tokenizers: offline, or with the hub unreachable, they fail before
drawing anything. Every strategy loads its tokenizer through `library.strategy_base.TokenizeStrategy._load_tokenizer`
(model class, hub id, subfolder, cache dir); this wrapper gives that method TOKENIZER_DIR when the caller passed none,
and changes nothing else. The folder holds `<hub id with / as _>/` (what the wizard's Models step fetches). Runs in
the trainer's Python; imports nothing of lorawizard.
"""

from __future__ import annotations

import os
import runpy
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.stderr.write("usage: python run_offline_tokenizers.py TOKENIZER_DIR SCRIPT [ARGS...]\n")
        raise SystemExit(2)
    folder, script, args = argv[0], os.path.abspath(argv[1]), argv[2:]
    script_dir = os.path.dirname(script)
    sys.path.insert(0, script_dir)  # what `python SCRIPT` puts first
    sys.argv = [script, *args]
    if os.path.isdir(folder):
        from library import strategy_base

        original = strategy_base.TokenizeStrategy._load_tokenizer

        def load(self, model_class, model_id, subfolder=None, tokenizer_cache_dir=None):
            local = os.path.join(folder, model_id.replace("/", "_"))
            chosen = tokenizer_cache_dir or (folder if os.path.isdir(local) else None)
            return original(self, model_class, model_id, subfolder, chosen)

        strategy_base.TokenizeStrategy._load_tokenizer = load
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
