"""The documentation's Python snippets run against the current library.

Every ```` ```python ```` block of `README.md` and `docs/**/*.md` is executed,
page by page, so that a snippet left behind by an API change fails here
rather than in a reader's hands.

Conventions for the pages:

- A page's blocks run in order, in one namespace: a later block may use the
  names an earlier one defined (the model, the data). The namespace starts
  with the aliases the documentation uses throughout: `keras`, `np`
  (numpy), `tf` (tensorflow) and `tfc` (tfconstrain).
- `<!-- skip-snippet -->` (optionally `<!-- skip-snippet: reason -->`) on the
  line before a fence leaves that block out, for code that cannot run here:
  a cluster, a TPU, a cloud bucket, an output listing.
- `<!-- snippet-setup ... -->`, an HTML comment that the site does not show,
  runs the code between its first line and `-->` at that point of the page,
  for snippets that continue from a model and data the prose only
  describes. Prefer visible code: a setup is for fragments only.
- Snippets are kept small (few epochs, small data) in the pages themselves;
  nothing is patched here. A page that still takes long is listed in `SLOW`
  (marked `slow`: `python3 dev.py test -m slow` runs it).

Each page runs in a fresh temporary working directory, so files a snippet
writes (`best.keras`, `logs/`) land there. A page that creates a
`tf.distribute` strategy runs in a process of its own (`python
tests/test_doc_snippets.py PAGE` does the same by hand).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Pages whose snippets take long to run (a slow test each), by path
# relative to the repository root, e.g. "docs/how-to/robustness.md".
SLOW: set[str] = set()

# Modules whose absence fails a page instead of skipping it.
_OURS = ("tfconstrain", "keras", "tensorflow", "numpy")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip-snippet\b.*-->\s*$")
_SETUP = re.compile(r"^\s*<!--\s*snippet-setup\b(?P<rest>.*)$")


@dataclasses.dataclass
class Snippet:
    line: int  # 1-based line of the first line of code in the page
    code: str
    skipped: bool = False
    setup: bool = False


def _is_python(info: str) -> bool:
    words = info.strip().lstrip("{").split()
    return bool(words) and words[0].lstrip(".") in ("python", "py")


def snippets(text: str) -> list[Snippet]:
    """The page's Python blocks and setup comments, in page order."""
    lines = text.splitlines()
    found = []
    index = 0
    previous = ""  # the last non-blank line outside a block
    while index < len(lines):
        line = lines[index]
        setup = _SETUP.match(line)
        if setup is not None:
            end = index
            while "-->" not in lines[end]:
                end += 1
                if end == len(lines):
                    raise ValueError(
                        f"line {index + 1}: unterminated snippet-setup"
                    )
            body = [setup.group("rest"), *lines[index + 1 : end + 1]]
            body[-1] = body[-1].split("-->")[0]
            code = textwrap.dedent("\n".join(body[1:]))
            if body[0].strip():
                raise ValueError(
                    f"line {index + 1}: put the code of a snippet-setup on "
                    "the lines after `<!-- snippet-setup`"
                )
            found.append(Snippet(index + 2, code, setup=True))
            index = end + 1
            previous = "-->"
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip():
                previous = line
            index += 1
            continue
        indent, marker = fence.group("indent"), fence.group("fence")
        close = re.compile(
            rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$"
        )
        end = index + 1
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        if _is_python(fence.group("info")):
            body = []
            for raw in lines[index + 1 : end]:
                # Blocks inside list items are indented with their item.
                body.append(
                    raw[len(indent) :] if raw.startswith(indent) else raw
                )
            found.append(
                Snippet(
                    index + 2,
                    textwrap.dedent("\n".join(body)),
                    skipped=bool(_SKIP.match(previous)),
                )
            )
        previous = line
        index = end + 1
    return found


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [
        page
        for page in pages
        if any(not s.setup for s in snippets(page.read_text(encoding="utf-8")))
    ]


def _name(page: Path) -> str:
    """The page's path relative to the repository (its test id)."""
    try:
        return page.relative_to(ROOT).as_posix()
    except ValueError:
        return page.as_posix()


def _param(page: Path):
    name = _name(page)
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(page, id=name, marks=marks)


def test_extraction():
    text = textwrap.dedent(
        """\
        Text.

        ```python
        a = 1
        ```

        <!-- skip-snippet: needs a cluster -->
        ```python
        b = undefined
        ```

        ```bash
        echo "```python"
        ```

        1. In a list:

           ```python
           c = a + 1
           ```

        <!-- snippet-setup
        d = 4
        -->
        ~~~py
        e = d
        ~~~
        """
    )
    found = snippets(text)
    assert [(s.line, s.code.strip(), s.skipped, s.setup) for s in found] == [
        (4, "a = 1", False, False),
        (9, "b = undefined", True, False),
        (19, "c = a + 1", False, False),
        (23, "d = 4", False, True),
        (26, "e = d", False, False),
    ]


class _Skip(Exception):
    """A page that cannot run here (a missing optional package)."""


def run_page(page: Path) -> int:
    """Runs the page's snippets in order, in one namespace.

    Returns:
        The number of (non-setup) snippets run.

    Raises:
        _Skip: when a snippet needs an optional package that is missing.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import tfconstrain as tfc

    name = _name(page)
    namespace = {
        "__name__": "doc_snippet_" + re.sub(r"\W", "_", name),
        "keras": keras,
        "np": np,
        "tf": tf,
        "tfc": tfc,
    }
    ran = 0
    for snippet in snippets(page.read_text(encoding="utf-8")):
        if snippet.skipped:
            continue
        # Padded so that tracebacks give the page's own line numbers.
        source = "\n" * (snippet.line - 1) + snippet.code
        code = compile(source, str(page), "exec")
        try:
            exec(code, namespace)  # the documentation's own code
        except ModuleNotFoundError as error:
            # An optional third-party package (scikit-learn, pandas) that is
            # not installed skips the page; a missing module of the library
            # itself is a stale snippet.
            if error.name is None or error.name.split(".")[0] in _OURS:
                raise
            raise _Skip(f"{name}:{snippet.line}: needs {error.name}") from None
        ran += not snippet.setup
    return ran


def _needs_own_process(page: Path) -> bool:
    """Whether the page creates a `tf.distribute` strategy.

    Strategies created one after the other in one process share collective
    keys and can match each other's collectives (see `mirrored` in
    conftest.py), so such a page runs in a fresh process, on the same two
    logical CPU devices as the tests.
    """
    code = "\n".join(
        s.code
        for s in snippets(page.read_text(encoding="utf-8"))
        if not s.skipped
    )
    return re.search(r"Strategy\(", code) is not None


_SKIP_EXIT = 77


@pytest.mark.parametrize("page", [_param(page) for page in _pages()])
def test_page_snippets_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = _name(page)
    if _needs_own_process(page):
        path = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(page)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
            timeout=600,
        )
        if result.returncode == _SKIP_EXIT:
            pytest.skip(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 0, (
            f"{name} (run in its own process) failed:\n" + result.stderr[-5000:]
        )
        ran = int(result.stdout.strip().splitlines()[-1])
    else:
        try:
            ran = run_page(page)
        except _Skip as skip:
            pytest.skip(str(skip))
    if not ran:
        pytest.skip(f"{name}: every snippet is marked skip-snippet")


def _main(page: str) -> int:
    """Runs one page in this process, configured as conftest.py does."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    keras.utils.set_random_seed(0)
    try:
        ran = run_page(Path(page).resolve())
    except _Skip as skip:
        print(skip)
        return _SKIP_EXIT
    print(ran)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
