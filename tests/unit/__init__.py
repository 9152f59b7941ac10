"""Tests of core/, the CLI and headless replay: no Textual App driven."""
