#!/usr/bin/env python3
"""Set-up and entry points: `python3 dev.py demo` and `python3 dev.py test`.

Each command creates (or reuses) the virtual environment `.venv` next to this
file, installs tfconstrain with what the command needs (once; again when
setup.cfg changes), and runs. Needs only Python >= 3.10 and pip.

TensorFlow: if the environment has no TensorFlow yet, the CPU build is
installed (`.[cpu]`); set TFCONSTRAIN_TF=tensorflow to install the regular
(GPU-capable) wheel instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".tfconstrain-installed"


def ensure_environment() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may run on any Python
        sys.exit("tfconstrain needs Python >= 3.10.")
    if not PYTHON.exists():
        print(f"Creating the virtual environment {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    has_tf = (
        subprocess.run(
            [str(PYTHON), "-c", "import tensorflow"],
            capture_output=True,
        ).returncode
        == 0
    )
    build = os.environ.get("TFCONSTRAIN_TF", "cpu")
    extras = ["test", "demo"] if has_tf else ["test", "demo", build]
    print("Installing tfconstrain and its dependencies ...", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        check=True,
    )
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-e",
            f"{ROOT}[{','.join(extras)}]",
        ],
        check=True,
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_environment()
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if argv[0] == "demo":
        command = [str(PYTHON), str(ROOT / "examples" / "demo.py"), *argv[1:]]
    else:
        command = [str(PYTHON), "-m", "pytest", "-q", *argv[1:]]
    return subprocess.run(command, cwd=ROOT, env=environment).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
