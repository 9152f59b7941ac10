"""The extras: the real sd-scripts trainer (../shared/e2e) and real odd images (../shared/data); `pytest -m extra`."""
