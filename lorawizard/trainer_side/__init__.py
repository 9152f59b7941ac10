"""Scripts that run inside the trainer's own Python (sd-scripts' venv), as subprocesses, by path.

They may import torch — this is the only place in the project that does, and never in the wizard's process.
Each is standalone (standard library + what the trainer's venv has), because the trainer's Python does not
have lorawizard installed.
"""
