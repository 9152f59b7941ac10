"""The train step: launch and follow, the log parser, diagnosis, checkpoints kept, samples, saved states, the dashboard."""
