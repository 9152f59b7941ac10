"""Starting the trainer: its command and configs, the multi-GPU and multi-machine plans, detached runs and the project lock."""
