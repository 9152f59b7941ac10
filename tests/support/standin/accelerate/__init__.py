"""Test double: a fake `accelerate` package (only `accelerate.commands.launch`). Not the real library."""
