"""Jobs: one job per module; the worker and its scheduler wiring live beside them."""
