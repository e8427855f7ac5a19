#!/usr/bin/env python3
"""Set-up and entry points for working on tfconstrain.

    python3 dev.py demo [--quick]        run examples/demo.py
    python3 dev.py test [PYTEST ARGS]    the test suite (slow tests: -m slow)
    python3 dev.py smoke [--floor] [PYTEST ARGS]
                                         the fast `smoke` subset of the tests;
                                         --floor: in .venv-floor, on the
                                         oldest supported TensorFlow/Keras
                                         (ci/constraints-floor.txt)
    python3 dev.py docs [MKDOCS ARGS]    strict build of the documentation site
    python3 dev.py examples [--quick]    run every examples/*.py, print timings
    python3 dev.py catalogue [ARGS]      benchmarks/catalogue.py (the dual
                                         methods' catalogue; --quick: CI)

Each command creates (or reuses) the virtual environment `.venv` next to this
file and installs tfconstrain into it with the extras `test,demo,plot,docs`
(once; again when setup.cfg or the pins change). Needs only Python >= 3.10
and pip.

Versions: installs use the exact pins of `ci/constraints-latest.txt` (every
package, as CI tests them), so a new upstream release changes nothing until
the pins are regenerated (`python3 ci/update_constraints.py latest`). The
pins are made for the Python version in the file's header; on another
Python, setup.cfg's ranges are used instead. TFCONSTRAIN_CONSTRAINTS=none
installs from the ranges, TFCONSTRAIN_CONSTRAINTS=FILE uses another file.

TensorFlow: if the environment has no TensorFlow yet, the CPU build is
installed (`.[cpu]`); set TFCONSTRAIN_TF=tensorflow to install the regular
(GPU-capable) wheel instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CI = ROOT / "ci"
BIN = "Scripts" if os.name == "nt" else "bin"
EXE = "python.exe" if os.name == "nt" else "python"
PYTEST_NO_TESTS = 5  # pytest's exit code when no test was collected


@dataclass(frozen=True)
class Environment:
    """A virtual environment, its pins and the extras installed into it."""

    venv: Path
    constraints: Path
    extras: tuple[str, ...]
    # Whether TFCONSTRAIN_CONSTRAINTS may replace `constraints`.
    overridable: bool

    @property
    def python(self) -> Path:
        return self.venv / BIN / EXE

    @property
    def stamp(self) -> Path:
        return self.venv / ".tfconstrain-installed"


LATEST = Environment(
    ROOT / ".venv",
    CI / "constraints-latest.txt",
    ("test", "demo", "plot", "docs"),
    overridable=True,
)
FLOOR = Environment(
    ROOT / ".venv-floor",
    CI / "constraints-floor.txt",
    ("test",),
    overridable=False,
)


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it."""
    return (
        str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    )


def _header(path: Path, field: str) -> str | None:
    """The value of a `# field: value` line at the top of a pins file."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        if key.strip() == field:
            return value.strip()
    return None


def constraints_for(environment: Environment) -> Path | None:
    """The pins file to install `environment` with, or None for the ranges."""
    chosen = os.environ.get("TFCONSTRAIN_CONSTRAINTS", "")
    if environment.overridable and chosen.lower() == "none":
        return None
    if environment.overridable and chosen:
        return Path(chosen).resolve()
    path = environment.constraints
    if not path.exists():
        sys.exit(f"Missing pins file {path}.")
    made_for = _header(path, "python")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if made_for == running:
        return path
    if not environment.overridable:
        sys.exit(
            f"{_shown(path)} pins versions for Python {made_for}; "
            f"this is Python {running}."
        )
    print(
        f"Note: {_shown(path)} pins versions for Python {made_for}; "
        f"this is Python {running}, so setup.cfg's version ranges are used "
        "(the newest releases they allow).",
        flush=True,
    )
    return None


def ensure_environment(environment: Environment) -> Path:
    """Create and install `environment` if needed; return its Python."""
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may run on any Python
        sys.exit("tfconstrain needs Python >= 3.10.")
    constraints = constraints_for(environment)
    build = os.environ.get("TFCONSTRAIN_TF", "cpu")
    state = hashlib.sha256((ROOT / "setup.cfg").read_bytes())
    state.update(constraints.read_bytes() if constraints else b"no pins")
    state.update(",".join([*environment.extras, build]).encode())
    wanted = state.hexdigest()
    if environment.stamp.exists() and environment.stamp.read_text() == wanted:
        return environment.python
    start = time.perf_counter()
    if not environment.python.exists():
        print(f"Creating the virtual environment {environment.venv} ...")
        venv.EnvBuilder(with_pip=True).create(environment.venv)
        # Git ignores the environment whatever .gitignore says.
        (environment.venv / ".gitignore").write_text("*\n")
    has_tf = (
        subprocess.run(
            [str(environment.python), "-c", "import tensorflow"],
            capture_output=True,
        ).returncode
        == 0
    )
    extras = [*environment.extras, *([] if has_tf else [build])]
    pins = ["-c", str(constraints)] if constraints else []
    where = _shown(constraints) if constraints else "setup.cfg's ranges"
    print(
        f"Installing tfconstrain[{','.join(extras)}] with the versions of "
        f"{where} ...",
        flush=True,
    )
    pip = [str(environment.python), "-m", "pip", "install", "--quiet", *pins]
    subprocess.run([*pip, "--upgrade", "pip", "setuptools"], check=True)
    # The (pinned) setuptools just installed builds tfconstrain.
    subprocess.run(
        [*pip, "--no-build-isolation", "-e", f"{ROOT}[{','.join(extras)}]"],
        check=True,
    )
    environment.stamp.write_text(wanted)
    print(f"Environment ready in {time.perf_counter() - start:.0f} s.")
    return environment.python


def _run(python: Path, arguments: list[str]) -> int:
    environment = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", NO_MKDOCS_2_WARNING="1"
    )
    return subprocess.run(
        [str(python), *arguments], cwd=ROOT, env=environment
    ).returncode


def demo(arguments: list[str]) -> int:
    python = ensure_environment(LATEST)
    return _run(python, [str(ROOT / "examples" / "demo.py"), *arguments])


def test(arguments: list[str]) -> int:
    python = ensure_environment(LATEST)
    return _run(python, ["-m", "pytest", "-q", *arguments])


def smoke(arguments: list[str]) -> int:
    environment = FLOOR if "--floor" in arguments else LATEST
    arguments = [a for a in arguments if a != "--floor"]
    python = ensure_environment(environment)
    code = _run(python, ["-m", "pytest", "-q", "-m", "smoke", *arguments])
    if code == PYTEST_NO_TESTS:
        print("No test marked `smoke` was collected.", file=sys.stderr)
        return 1
    return code


def docs(arguments: list[str]) -> int:
    if not (ROOT / "mkdocs.yml").exists():
        print("No mkdocs.yml yet: no documentation site to build (skipped).")
        return 0
    python = ensure_environment(LATEST)
    return _run(python, ["-m", "mkdocs", "build", "--strict", *arguments])


def examples(arguments: list[str]) -> int:
    python = ensure_environment(LATEST)
    results = []
    for script in sorted((ROOT / "examples").glob("*.py")):
        name = script.relative_to(ROOT)
        print(f"=== {name} {' '.join(arguments)}", flush=True)
        start = time.perf_counter()
        code = _run(python, [str(script), *arguments])
        results.append((str(name), time.perf_counter() - start, code))
    if not results:
        print("No examples/*.py to run.")
        return 0
    width = max(len(name) for name, _, _ in results)
    print(f"\n{'example'.ljust(width)}  seconds  result")
    for name, seconds, code in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name.ljust(width)}  {seconds:7.1f}  {status}")
    failed = [name for name, _, code in results if code != 0]
    if failed:
        print(f"Failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def catalogue(arguments: list[str]) -> int:
    python = ensure_environment(LATEST)
    script = ROOT / "benchmarks" / "catalogue.py"
    return _run(python, [str(script), *arguments])


COMMANDS = {
    "demo": demo,
    "test": test,
    "smoke": smoke,
    "docs": docs,
    "examples": examples,
    "catalogue": catalogue,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
