"""Shared test helpers and doubles: fake NVML, a fake hub over real HTTP, the stand-in trainer, fixtures."""
