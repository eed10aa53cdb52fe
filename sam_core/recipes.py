"""Training recipes as data: a recipe is a dataclass of settings whose defaults run (sam_core.train.TrainConfig,
sam_core.text_train.TextTrainConfig), and an experiment is a few overrides of it.

The training scripts (scripts/train_embedded.py, scripts/train_text.py) take their overrides from the command line
(``--set FIELD=VALUE``) and, when a run goes on under another recipe than it started with, say which fields changed.
"""

from __future__ import annotations

import dataclasses


def parse_overrides(recipe, pairs: list[str]) -> dict:
    """["key=value", ...] -> {key: value}, each value typed like ``recipe``'s field: a bool from 1/true/yes,
    "None" as None, a number as the field's type, anything else as text. A pair that is not FIELD=VALUE, an
    unknown field or a dict field ends the program (SystemExit) naming the fields."""
    fields = {f.name for f in dataclasses.fields(recipe)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields or isinstance(getattr(recipe, key), dict):
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(recipe, key)
        if isinstance(current, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif value == "None":
            out[key] = None
        elif isinstance(current, int | float):
            out[key] = type(current)(value)
        else:
            out[key] = value
    return out


def recipe_changes(before: dict, recipe) -> dict:
    """{field: [old, new]} for the fields of ``recipe`` that differ from ``before`` (a recipe as a dict: a
    checkpoint's "config"), metadata aside; a field the earlier recipe did not have yet counts as its default."""
    after = dataclasses.asdict(recipe)
    defaults = dataclasses.asdict(type(recipe)())
    old = {k: before.get(k, defaults.get(k)) for k in after}
    return {k: [old[k], v] for k, v in after.items() if k != "metadata" and _plain(old[k]) != _plain(v)}


def _plain(value):
    # A tuple setting and the same values as a list are one setting.
    return list(value) if isinstance(value, tuple) else value
