"""tfconstrain against Cooper (PyTorch) on the same Adult fairness problem.

The problem (see `adult_problem.py`): the Adult MLP (64 hidden units, batch
256, Adam 1e-3) under demographic parity `|r_female - r_male| <= 0.05`,
solved by alternating gradient descent-ascent with the same dual step
(`λ ← [λ + η·v]₊` on the hard rates, `η = 0.05`) and the same surrogate.
Trained, for the same number of epochs and seeds, by

- plain PyTorch and Cooper 1.x (PyTorch, CPU), in a worker process that
  runs in the benchmark environment `.venv-bench`;
- plain Keras and `tfc.ConstrainedModel` at several Keras settings: Keras'
  defaults (`steps_per_execution=1`, no XLA on CPU), `steps_per_execution=
  32`, XLA (`jit_compile=True`), and both.

Every round trains each candidate once from scratch (same seed for all in
a round), in an order that rotates from round to round, so that the load
of a shared machine hits all alike. The epoch time of a run is the median
over its epochs after the first (the first traces and compiles). Printed
and written to `benchmarks/results/vs_cooper.json`:

- seconds per epoch, wall and process CPU time (median over rounds; CPU
  time does not grow while other processes hold the cores, so it is the
  steadier figure on a loaded machine);
- constrained/plain, each against its own framework in the same round
  (median over rounds of the paired ratio);
- tfconstrain/Cooper in the same round;
- final (last-iterate) train/test accuracy and DP gap, and how many runs
  end feasible (train DP gap <= 0.05).

Both frameworks run with the same number of threads (`--threads`, default
1: the model is too small to gain from more, and fewer threads are less
noisy on a shared machine; 0 keeps each framework's default).

Run (creates `.venv-bench` with PyTorch CPU and cooper-optim on first use):
`.venv/bin/python benchmarks/vs_cooper.py [--rounds 5 --epochs 10]`.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_ENV = ROOT / ".venv-bench"
BENCH_PYTHON = BENCH_ENV / "bin" / "python"
# PyTorch's CPU build: on Linux, PyPI's default `torch` wheel pulls several
# GB of CUDA libraries. Override with TFCONSTRAIN_BENCH_TORCH (and pip's
# own PIP_INDEX_URL / PIP_EXTRA_INDEX_URL for PyTorch's CPU wheel index).
BENCH_REQUIREMENTS = (
    os.environ.get("TFCONSTRAIN_BENCH_TORCH", "torch==2.13.0"),
    "cooper-optim==1.0.1",
    "numpy",
)


def ensure_bench_env() -> None:
    """Creates `.venv-bench` (PyTorch CPU, Cooper, numpy) when missing."""
    check = [str(BENCH_PYTHON), "-c", "import torch, cooper, numpy"]
    if BENCH_PYTHON.exists() and subprocess.run(check).returncode == 0:
        return
    print(f"Creating {BENCH_ENV} with {' '.join(BENCH_REQUIREMENTS)} ...")
    import venv

    venv.EnvBuilder(with_pip=True, clear=True).create(BENCH_ENV)
    subprocess.run(
        [str(BENCH_PYTHON), "-m", "pip", "install", "--quiet"]
        + list(BENCH_REQUIREMENTS),
        check=True,
    )
    subprocess.run(check, check=True)


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="0: default")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["defaults", "spe32", "xla", "xla+spe32"],
        help="Keras settings to run (defaults, spe32, xla, xla+spe32)",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds × 4")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Read by common.py when it configures TensorFlow's threads.
    os.environ["TFCONSTRAIN_BENCH_THREADS"] = str(ARGS.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from adult_problem import ADAM_EPSILON  # noqa: E402
from adult_problem import BATCH  # noqa: E402
from adult_problem import BOUND  # noqa: E402
from adult_problem import DUAL_LEARNING_RATE  # noqa: E402
from adult_problem import HIDDEN  # noqa: E402
from adult_problem import LEARNING_RATE  # noqa: E402
from adult_problem import scores  # noqa: E402
from common import machine_info  # noqa: E402
from common import write_json  # noqa: E402

import tfconstrain as tfc  # noqa: E402

SETTINGS = {
    "defaults": {"steps_per_execution": 1, "jit_compile": "auto"},
    "spe32": {"steps_per_execution": 32, "jit_compile": "auto"},
    "xla": {"steps_per_execution": 1, "jit_compile": True},
    "xla+spe32": {"steps_per_execution": 32, "jit_compile": True},
}


class _EpochTimes(keras.callbacks.Callback):
    """Wall and process CPU seconds of every epoch."""

    def on_train_begin(self, logs=None):
        self.wall, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self.start[0])
        self.cpu.append(time.process_time() - self.start[1])


def train_keras(data, constrained: bool, setting: str, epochs: int, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((data.x_train.shape[1],), name="features")
    hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    optimizer = keras.optimizers.Adam(LEARNING_RATE, epsilon=ADAM_EPSILON)
    compile_args = {
        "optimizer": optimizer,
        "loss": "binary_crossentropy",
        **SETTINGS[setting],
    }
    if constrained:
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(tfc.constraints.DemographicParity("sex") <= BOUND)
        model.compile(**compile_args, dual_optimizer=DUAL_LEARNING_RATE)
        x = {"features": data.x_train, "sex": data.sex_train}
    else:
        model = keras.Model(inputs, outputs)
        model.compile(**compile_args)
        x = data.x_train
    timer = _EpochTimes()
    model.fit(
        x,
        data.y_train,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )

    def predict(features):
        return model.predict(features, batch_size=4096, verbose=0)

    result = {
        "epoch_seconds": timer.wall,
        "epoch_cpu_seconds": timer.cpu,
        "scores": scores(predict, data),
    }
    if constrained:
        (multiplier,) = model.multipliers.values()
        result["multipliers"] = np.asarray(multiplier).tolist()
    keras.backend.clear_session()
    return result


class TorchWorker:
    """The PyTorch/Cooper side, a persistent process in `.venv-bench`."""

    def __init__(self, threads: int):
        self.process = subprocess.Popen(
            [
                str(BENCH_PYTHON),
                str(Path(__file__).with_name("torch_worker.py")),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                "The PyTorch worker exited early; run "
                f"`{BENCH_PYTHON} benchmarks/torch_worker.py` to see why."
            )
        return json.loads(line)

    def train(self, kind: str, epochs: int, seed: int) -> dict:
        request = {
            "kind": kind,
            "epochs": epochs,
            "seed": seed,
            "dual_learning_rate": DUAL_LEARNING_RATE,
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def candidates(settings) -> list:
    """(name, framework, plain counterpart or None, runner key)."""
    rows = [
        ("PyTorch plain", "torch", None),
        ("Cooper", "torch", "PyTorch plain"),
    ]
    for setting in settings:
        rows.append((f"Keras plain, {setting}", "keras", None))
        rows.append(
            (f"tfconstrain, {setting}", "keras", f"Keras plain, {setting}")
        )
    return rows


WARMUP_EPOCHS = 2
# name -> function of a run's epoch times after the warm-up epochs.
ESTIMATES = {
    "wall": lambda run: statistics.median(run["epoch_seconds"][WARMUP_EPOCHS:]),
    "wall_best": lambda run: min(run["epoch_seconds"][WARMUP_EPOCHS:]),
    "cpu": lambda run: statistics.median(
        run["epoch_cpu_seconds"][WARMUP_EPOCHS:]
    ),
}


def epoch_time(run: dict) -> float:
    """Median wall time of the epochs after the first two.

    The first epoch traces (and with XLA compiles) the step; the second may
    trace again: after the smaller last batch of the first epoch,
    `tf.function` relaxes the batch dimension, and XLA compiles for each
    batch shape.
    """
    return ESTIMATES["wall"](run)


def summarize(runs: dict, rows: list) -> dict:
    """Epoch times, paired ratios, accuracy and feasibility per candidate.

    Epoch times per estimate (`wall`: median wall time of a run's epochs
    after the first two; `wall_best`: its fastest such epoch; `cpu`: median
    process CPU time), median over rounds. Ratios: median over rounds of the
    ratio to the run of the same round (own plain framework; Cooper).
    """
    summary = {}
    for name, _, plain in rows:
        row = {}
        for estimate, fn in ESTIMATES.items():
            row[f"epoch_{estimate}_seconds"] = statistics.median(
                fn(run) for run in runs[name]
            )
        row["warmup_seconds"] = statistics.median(
            sum(run["epoch_seconds"][:WARMUP_EPOCHS]) for run in runs[name]
        )
        others = {}
        if plain is not None:
            others["own_plain"] = plain
        if name.startswith("tfconstrain"):
            others["cooper"] = "Cooper"
        for key, other in others.items():
            for estimate, fn in ESTIMATES.items():
                row[f"ratio_to_{key}_{estimate}"] = statistics.median(
                    fn(run) / fn(base)
                    for run, base in zip(runs[name], runs[other])
                )
        for split in ("train", "test"):
            for metric in ("accuracy", "dp_gap"):
                values = [run["scores"][split][metric] for run in runs[name]]
                row[f"{split}_{metric}_mean"] = float(np.mean(values))
                row[f"{split}_{metric}_std"] = float(np.std(values))
        row["feasible_runs"] = sum(
            run["scores"]["train"]["dp_gap"] <= BOUND for run in runs[name]
        )
        row["runs"] = len(runs[name])
        summary[name] = row
    return summary


def print_table(summary: dict) -> None:
    print(
        f"{'':<28} {'s/epoch (median)':>16} {'/ own plain':>11} "
        f"{'/ Cooper':>11}\n"
        f"{'candidate':<28} {'wall':>8}{'CPU':>8} {'wall':>6}{'CPU':>5} "
        f"{'wall':>6}{'CPU':>5} {'train acc':>9} {'test acc':>9} "
        f"{'train DP':>8} {'test DP':>8} {'feasible':>8}"
    )

    def ratio(row, key):
        value = row.get(key)
        return f"{value:.2f}" if value else ""

    for name, row in summary.items():
        print(
            f"{name:<28} {row['epoch_wall_seconds']:>8.3f}"
            f"{row['epoch_cpu_seconds']:>8.3f} "
            f"{ratio(row, 'ratio_to_own_plain_wall'):>6}"
            f"{ratio(row, 'ratio_to_own_plain_cpu'):>5} "
            f"{ratio(row, 'ratio_to_cooper_wall'):>6}"
            f"{ratio(row, 'ratio_to_cooper_cpu'):>5} "
            f"{row['train_accuracy_mean']:>9.4f} "
            f"{row['test_accuracy_mean']:>9.4f} "
            f"{row['train_dp_gap_mean']:>8.4f} "
            f"{row['test_dp_gap_mean']:>8.4f} "
            f"{row['feasible_runs']:>4}/{row['runs']}"
        )


def main() -> None:
    args = ARGS
    if args.quick:
        args.rounds, args.epochs = 2, 4
    data = tfc.datasets.load_adult()
    info = machine_info()
    print(
        f"{info['date']}  {info['cpu']}, {info['cores']} cores, load "
        f"{info['load_average_1_5_15']}; {args.rounds} rounds × "
        f"{args.epochs} epochs, {args.threads or 'default'} thread(s)"
    )
    worker = TorchWorker(args.threads)
    rows = candidates(args.settings)
    runs = {name: [] for name, _, _ in rows}
    try:
        for r in range(args.rounds):
            shift = (r * 3) % len(rows)
            for name, framework, plain in rows[shift:] + rows[:shift]:
                if framework == "torch":
                    kind = "plain" if plain is None else "cooper"
                    run = worker.train(kind, args.epochs, seed=r)
                else:
                    setting = name.split(", ", 1)[1]
                    run = train_keras(
                        data, plain is not None, setting, args.epochs, r
                    )
                runs[name].append(run)
                print(
                    f"  round {r}: {name:<28} {epoch_time(run):.3f} s/epoch, "
                    f"train DP gap {run['scores']['train']['dp_gap']:.4f}",
                    flush=True,
                )
    finally:
        worker.close()
    summary = summarize(runs, rows)
    print()
    print_table(summary)
    after = os.getloadavg()
    print(f"load average after: {[round(v, 2) for v in after]}")
    path = write_json(
        "vs_cooper_quick" if args.quick else "vs_cooper",
        {
            "benchmark": "vs_cooper",
            "machine": info,
            "load_average_after": list(after),
            "torch_worker": worker.info,
            "arguments": vars(args),
            "problem": {
                "hidden": HIDDEN,
                "batch": BATCH,
                "bound": BOUND,
                "learning_rate": LEARNING_RATE,
                "dual_learning_rate": DUAL_LEARNING_RATE,
            },
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    ensure_bench_env()
    main()
