"""Tests that drive the wizard with Pilot (App.run_test) and its snapshot SVGs (__snapshots__/, per screen)."""
