#!/usr/bin/env python3
"""Regenerate the pinned versions CI installs: `ci/constraints-*.txt`.

    python3 ci/update_constraints.py latest   # newest releases today
    python3 ci/update_constraints.py floor    # oldest TensorFlow/Keras pair

Each file is the complete `pip freeze` of a fresh virtual environment, so
every package, transitive ones included, is pinned: a new upstream release
changes nothing in CI until someone reruns this script, reviews the diff and
commits it (after `python3 dev.py test` and `python3 dev.py smoke --floor`
pass with the new pins).

- `latest`: tfconstrain with the extras `cpu,test,demo,plot,docs`, resolved
  by pip to the newest releases setup.cfg's ranges allow. `tensorflow` (the
  GPU-capable wheel) is pinned to the same version as `tensorflow-cpu`.
- `floor`: tfconstrain with `cpu,test`, TensorFlow and Keras at the oldest
  releases allowed by setup.cfg (`tensorflow-cpu>=A`, `keras>=B`: the oldest
  published versions >= A and >= B); everything else resolved by pip.

The pins hold for the Python version and platform written in the file's
header (`dev.py` ignores a file made for another Python).
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import json
import platform
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "ci"
EXTRAS = {"latest": "cpu,test,demo,plot,docs", "floor": "cpu,test"}
# tfconstrain itself is installed from the work tree, never pinned.
UNPINNED = {"tfconstrain"}


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def canonical_name(name: str) -> str:
    """PEP 503 normalised name: "Typing_Extensions" -> "typing-extensions"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_key(version: str) -> tuple[int, ...]:
    """Numeric release part of a version: "2.15.0.post1" -> (2, 15, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        raise ValueError(f"Unparsable version {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def setup_cfg_floor(requirement: str) -> str:
    """The `>=` floor of `requirement` (e.g. "keras") in setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [
        *config["options"]["install_requires"].split("\n"),
        *(v for _, v in config["options.extras_require"].items()),
    ]
    for line in "\n".join(lines).split("\n"):
        match = re.fullmatch(
            rf"\s*{re.escape(requirement)}\s*>=\s*([\w.]+)\s*", line
        )
        if match:
            return match.group(1)
    raise SystemExit(f"setup.cfg has no `{requirement}>=...` requirement.")


def oldest_release(python: Path, package: str, floor: str) -> str:
    """The oldest published release of `package` that is >= `floor`.

    Pre-releases and releases without a wheel for this Python are not
    listed by `pip index versions`, so the answer installs here.
    """
    output = _run(
        [str(python), "-m", "pip", "index", "versions", package],
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Available versions:\s*(.+)", output)
    if match is None:
        raise SystemExit(f"`pip index versions {package}` printed:\n{output}")
    versions = [v.strip() for v in match.group(1).split(",")]
    allowed = [v for v in versions if _version_key(v) >= _version_key(floor)]
    if not allowed:
        raise SystemExit(f"No release of {package} >= {floor} for this Python.")
    return min(allowed, key=_version_key)


def resolve(kind: str) -> tuple[list[str], str]:
    """Install into a fresh environment; return its freeze and a summary."""
    with tempfile.TemporaryDirectory(prefix=f"tfconstrain-{kind}-") as tmp:
        venv.EnvBuilder(with_pip=True).create(tmp)
        python = Path(tmp) / "bin" / "python"
        pip = [str(python), "-m", "pip"]
        _run([*pip, "install", "--quiet", "--upgrade", "pip", "setuptools"])
        pins: list[str] = []
        if kind == "floor":
            pins = [
                f"{name}=={oldest_release(python, name, setup_cfg_floor(name))}"
                for name in ("tensorflow-cpu", "keras")
            ]
        try:
            _run(
                [
                    *pip,
                    "install",
                    "--quiet",
                    *pins,
                    "-e",
                    f"{ROOT}[{EXTRAS[kind]}]",
                ]
            )
        except subprocess.CalledProcessError:
            raise SystemExit(
                f"{' and '.join(pins) or 'The newest releases'} cannot be "
                "installed on this Python: raise the floor in setup.cfg."
            ) from None
        freeze = _run(
            [*pip, "freeze", "--all", "--exclude-editable"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        check = (
            "import tensorflow as tf, keras; "
            "print(f'tensorflow {tf.__version__}, keras {keras.__version__}')"
        )
        summary = _run(
            [str(python), "-c", check], capture_output=True, text=True
        ).stdout.strip()
    pairs = (line.split("==") for line in freeze if "==" in line)
    pins = {
        canonical_name(name): version
        for name, version in pairs
        if canonical_name(name) not in UNPINNED
    }
    if kind == "latest":
        pins["tensorflow"] = pins["tensorflow-cpu"]
    return [f"{name}=={pins[name]}" for name in sorted(pins)], summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(EXTRAS))
    kind = parser.parse_args().kind
    lines, summary = resolve(kind)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    header = [
        f"# Pinned versions for CI ({kind}); regenerate with",
        f"#   python3 ci/update_constraints.py {kind}",
        f"# resolved: {datetime.date.today().isoformat()}, {summary}",
        f"# python: {python}",
        f"# platform: {sys.platform}-{platform.machine()}",
        f"# extras: {EXTRAS[kind]}",
    ]
    target = CI / f"constraints-{kind}.txt"
    target.write_text("\n".join([*header, *lines]) + "\n")
    print(json.dumps({"file": str(target), "pins": len(lines)}))


if __name__ == "__main__":
    main()
