"""Benchmarks: each module defines ``register(sub)`` adding ``python -m core bench <name>``."""
