"""The written map stays true to the code: the README's layout names every module, and every dotted name in
docs/ARCHITECTURE.md (a module, function or method of the project) exists."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sam_core", "stores", "tasks", "flows")


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if p.name != "__init__.py"]


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Use it as a library")]
    missing = [str(p.relative_to(ROOT)) for p in _modules() if not re.search(rf"\b{p.stem}\b", layout)]
    assert missing == [], f"README's layout does not name: {missing}"


def _resolve(dotted: str):
    """The object a dotted name of the project names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_every_name_in_the_architecture_note_exists():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    names = set(re.findall(rf"`((?:{'|'.join(PACKAGES)})\.[\w.]+)`", text))
    assert len(names) >= 8  # the eight hops name their functions
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == [], f"docs/ARCHITECTURE.md names what the code does not have: {missing}"
