"""The GPUs: NVML inventory and memory sampling, VRAM presets, the probe's saved measurements."""
