"""The captions step: the caption set and its files, token budgets, auto-captions."""
