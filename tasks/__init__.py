"""Prefect tasks: thin, retry-safe adapters between the store, sam_core, Ray and the annotators."""

from tasks.settings import apply_prefect_defaults

# Prefect reads its settings on first import: set the engine's defaults before any task module imports it.
apply_prefect_defaults()
