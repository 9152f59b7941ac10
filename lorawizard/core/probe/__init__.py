"""The GPU & batch size step: short training trials per bucket that find the largest batch that trains."""
