"""lorawizard: train a FLUX.1-dev LoRA with kohya-ss sd-scripts from a terminal wizard.

Nothing is imported here on purpose: `lorawizard --help` and `--replay` must stay light.
"""

__version__ = "0.5.0"
