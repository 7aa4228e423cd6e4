"""Readers: activation files, the activation store, planted synthetic families."""
