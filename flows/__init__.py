"""Prefect flows: the data engine's stages and rounds, composed from tasks, plus the ``sam-engine`` CLI."""

from tasks.settings import apply_prefect_defaults

# Prefect reads its settings on first import: set the engine's defaults before any flow module imports it.
apply_prefect_defaults()
