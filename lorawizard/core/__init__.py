"""Pure logic and I/O. Never imports Textual, torch or accelerate (tests/unit/test_import_hygiene.py)."""
