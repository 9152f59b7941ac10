"""One screen per step, each a base.StepScreen; which screen is which step's: core/registry.py (`SCREENS`)."""
