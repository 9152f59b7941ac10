"""The Textual wizard: one screen per step. Screens translate messages into core calls; widgets only render."""
