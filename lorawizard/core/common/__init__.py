"""Shared by every concern: atomic writes and display paths, child processes, progress and ETA, one-line text."""
