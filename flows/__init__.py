"""Prefect flows: thin wiring over ``pipeline`` and ``models``."""
