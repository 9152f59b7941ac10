"""Pure logic and I/O. Never imports Textual, torch or accelerate (tests/test_import_hygiene.py)."""
