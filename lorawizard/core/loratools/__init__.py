"""After training: resize, convert and merge a LoRA with the trainer's own tools, and check that it loads."""
