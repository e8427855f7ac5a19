"""The documentation: every public name is in the API reference, documented.

Public names are read from the package at run time, so a name added to an
`__all__` list must also get a `::: tfconstrain.<path>` directive in one of
the pages of `docs/reference/` (and a docstring) for these tests to pass.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import tfconstrain

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
DIRECTIVE = re.compile(r"^:::[ \t]+([\w.]+)[ \t]*$", re.MULTILINE)
# Subpackages whose public names the reference must cover even if they ever
# leave the top-level `__all__`.
SUBPACKAGES = ("constraints", "layers", "optimizers", "safeguards", "plot")


def _module_names(module: ModuleType) -> list[str]:
    """`module.__all__`, else the public names the module itself defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
    )


def _public_objects(
    module: ModuleType, path: str, seen: set[str]
) -> Iterator[tuple[str, object]]:
    """Yields `(public dotted path, object)`, recursing into subpackages."""
    for name in _module_names(module):
        dotted = f"{path}.{name}"
        if dotted in seen:
            continue
        seen.add(dotted)
        value = getattr(module, name)
        yield dotted, value
        if inspect.ismodule(value) and value.__name__.startswith(
            "tfconstrain."
        ):
            yield from _public_objects(value, dotted, seen)


def public_objects() -> dict[str, object]:
    seen: set[str] = set()
    objects = dict(_public_objects(tfconstrain, "tfconstrain", seen))
    for name in SUBPACKAGES:
        module = importlib.import_module(f"tfconstrain.{name}")
        dotted = f"tfconstrain.{name}"
        if dotted not in objects:
            seen.add(dotted)
            objects[dotted] = module
            objects.update(_public_objects(module, dotted, seen))
    return objects


def reference_directives() -> dict[str, str]:
    """Maps each `::: identifier` of the reference pages to its page."""
    directives = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for identifier in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            directives[identifier] = page.name
    return directives


def own_docstring(value: object) -> str:
    """The object's own docstring: a class does not inherit its parent's."""
    if inspect.isclass(value):
        doc = value.__dict__.get("__doc__")
    else:
        doc = getattr(value, "__doc__", None)
    return (doc or "").strip()


def test_public_names_are_found():
    objects = public_objects()
    for name in SUBPACKAGES:
        assert f"tfconstrain.{name}" in objects
    assert "tfconstrain.ConstrainedModel" in objects
    assert "tfconstrain.constraints.DemographicParity" in objects
    assert "tfconstrain.safeguards.MultiplierGrowthMonitor" in objects


def test_every_public_name_is_in_the_api_reference():
    directives = reference_directives()
    missing = sorted(set(public_objects()) - set(directives))
    assert not missing, (
        "Public names without a `::: <name>` directive in docs/reference/*.md "
        f"(add each to the page of its module): {missing}"
    )


def test_every_public_name_has_a_docstring():
    undocumented = sorted(
        name
        for name, value in public_objects().items()
        if not own_docstring(value)
    )
    assert not undocumented, f"Public names without a docstring: {undocumented}"


def test_every_reference_directive_names_a_public_object():
    public = public_objects()
    stale = {
        identifier: page
        for identifier, page in reference_directives().items()
        if identifier not in public
    }
    assert not stale, (
        "Directives in docs/reference/ that name no public object of "
        f"tfconstrain (renamed or removed?): {stale}"
    )


def test_site_builds_in_strict_mode(tmp_path):
    """`mkdocs build --strict` (warnings fail it), if mkdocs is installed."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    command = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "model.html").exists()
