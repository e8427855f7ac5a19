"""One fair classifier, three ways to train it: 1 device, 2 replicas, 2 workers.

The demographic-parity model of `examples/fairness_adult.py` (UCI Adult,
shipped with tfconstrain; `DemographicParity("sex") <= 0.05`, a small MLP,
Adam with cosine decay, dual gradient ascent with step 0.05) is trained
three times with the same seed, the same data order and the same global
batch:

1. on one device (the default strategy), with `steps_per_execution=32`;
2. under `tf.distribute.MirroredStrategy` over two logical CPU devices
   (configured before TensorFlow initialises);
3. under `tf.distribute.MultiWorkerMirroredStrategy` on two local worker
   processes: the script re-launches itself twice with `TF_CONFIG` on
   127.0.0.1 (free ports), waits for both with a timeout, and kills them if
   anything goes wrong.

Under both multi-replica strategies `steps_per_execution` is 1: Keras'
multi-step loop fails with more than one replica (see
docs/how-to/distributed.md). The constraint's statistics are all-reduced
before its value is formed, so every replica takes the dual step of the
whole global batch: the three runs should agree up to floating-point
summation order. The script prints, per setting, the final multiplier, the
DP gap and accuracy on the test split, and the largest difference of the
weights and multipliers to the one-device run; it saves the DP gap and the
multiplier per epoch to `--plot`.

Usage:

    python examples/distributed.py            # full data, 10 epochs, ~1.5 min
    python examples/distributed.py --quick    # 8192 rows, 4 epochs, < 1 min
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Importing TensorFlow, Keras and tfconstrain initialises no device: the
# logical CPU devices (driver) and the collective ops of the multi-worker
# strategy (workers) are still configured first, in `main`.
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402

DEFAULT_PLOT = Path(__file__).resolve().parent / "output" / "distributed.png"
BOUND = 0.05
CONSTRAINT = "demographic_parity"
SETTINGS = ("1 device", "MirroredStrategy", "2 workers (MWMS)")


class Data(NamedTuple):
    """Adult, the training rows shuffled once and cut to whole batches."""

    x_train: np.ndarray
    y_train: np.ndarray
    sex_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sex_test: np.ndarray


def load_data(rows: int | None, global_batch: int, seed: int) -> Data:
    """The training split in a fixed random order, whole global batches only.

    Every setting then sees the same global batches (training runs with
    `shuffle=False`), and every replica of every worker the same number of
    steps.

    Args:
        rows: Training rows to keep (None: as many as whole batches allow).
        global_batch: The global batch size.
        seed: Seed of the permutation.

    Returns:
        A `Data` tuple.
    """
    adult = tfc.datasets.load_adult()
    order = np.random.default_rng(seed).permutation(len(adult.y_train))
    size = len(order) if rows is None else min(rows, len(order))
    order = order[: size // global_batch * global_batch]
    return Data(
        x_train=adult.x_train[order],
        y_train=adult.y_train[order],
        sex_train=adult.sex_train[order],
        x_test=adult.x_test,
        y_test=adult.y_test,
        sex_test=adult.sex_test,
    )


def build_model(num_features: int, seed: int) -> tfc.ConstrainedModel:
    """The fairness model of `fairness_adult.py` (not compiled).

    Args:
        num_features: Width of the `features` input.
        seed: Seed of the initial weights.

    Returns:
        A `ConstrainedModel` without constraints.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return tfc.ConstrainedModel(inputs, outputs)


def train(
    strategy: tf.distribute.Strategy,
    data: Data,
    args: argparse.Namespace,
    steps_per_execution: int,
) -> dict:
    """Builds, compiles and fits the model under `strategy`.

    Args:
        strategy: The distribution strategy.
        data: The prepared data.
        args: Command-line arguments (epochs, global batch, seed).
        steps_per_execution: Keras' `steps_per_execution`.

    Returns:
        A JSON-ready dict: `weights` (list of nested lists), `multiplier`,
        `history` (per-epoch logs) and `seconds` (of `fit`).
    """
    steps = args.epochs * len(data.y_train) // args.global_batch
    with strategy.scope():
        model = build_model(data.x_train.shape[1], args.seed)
        model.add_constraint(
            tfc.constraints.DemographicParity("sex", num_groups=2) <= BOUND
        )
        model.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(2e-3, steps)
            ),
            loss="binary_crossentropy",
            dual_optimizer=0.05,
            steps_per_execution=steps_per_execution,
        )
    start = time.perf_counter()
    history = model.fit(
        {"features": data.x_train, "sex": data.sex_train},
        data.y_train,
        batch_size=args.global_batch,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {
        "weights": [w.numpy().tolist() for w in model.trainable_weights],
        "multiplier": np.asarray(model.multipliers[CONSTRAINT]).tolist(),
        "history": {
            key: np.asarray(values, np.float64).tolist()
            for key, values in history.history.items()
        },
        "seconds": seconds,
        "replicas": strategy.num_replicas_in_sync,
        "steps_per_execution": steps_per_execution,
    }


def test_metrics(result: dict, data: Data) -> dict:
    """Accuracy and DP gap of the final weights on the test split.

    Evaluated identically for every setting: the weights are loaded into a
    one-device copy of the model and its hard predictions counted in numpy.

    Args:
        result: A result of `train`.
        data: The prepared data.

    Returns:
        `{"accuracy": float, "dp_gap": float}`.
    """
    model = build_model(data.x_test.shape[1], seed=0)
    for variable, value in zip(model.trainable_weights, result["weights"]):
        variable.assign(np.asarray(value, np.float32))
    predicted = model(data.x_test, training=False).numpy()[:, 0] > 0.5
    rates = [predicted[data.sex_test == k].mean() for k in (0, 1)]
    return {
        "accuracy": float(np.mean(predicted == (data.y_test == 1))),
        "dp_gap": float(abs(rates[0] - rates[1])),
    }


def flat_state(result: dict) -> np.ndarray:
    """Weights then multiplier of a `train` result as one float64 vector.

    Args:
        result: A result of `train`.

    Returns:
        A 1-D float64 array.
    """
    parts = [np.ravel(np.asarray(w, np.float64)) for w in result["weights"]]
    parts.append(np.ravel(np.asarray(result["multiplier"], np.float64)))
    return np.concatenate(parts)


# ----------------------------------------------------------- the two workers
def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (bound to port 0, released).

    Args:
        count: Number of ports.

    Returns:
        The port numbers.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file.

    Args:
        path: The file.
        lines: Number of lines.

    Returns:
        The lines, or `"<no output>"` if the file cannot be read.
    """
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "<no output>"
    return "\n".join(text[-lines:]) or "<no output>"


def run_workers(argv: list[str], timeout: float) -> list[dict]:
    """Runs this script as two MWMS workers; returns their results.

    Each worker runs in its own process group, with `TF_CONFIG` naming both
    on 127.0.0.1; both are killed if one fails, on timeout, and on any
    error or interruption here.

    Args:
        argv: The command-line arguments of this run (passed on).
        timeout: Seconds to wait for both workers together.

    Returns:
        The result dicts of worker 0 (the chief) and worker 1.

    Raises:
        RuntimeError: if a worker fails or the timeout expires.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    with tempfile.TemporaryDirectory(prefix="tfc_distributed_") as temp:
        out = Path(temp)
        try:
            for index in range(2):
                config = {
                    "cluster": cluster,
                    "task": {"type": "worker", "index": index},
                }
                env = dict(os.environ, TF_CONFIG=json.dumps(config))
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    *argv,
                    "--worker-dir",
                    str(out),
                ]
                with open(out / f"worker{index}.log", "wb") as log:
                    processes.append(
                        subprocess.Popen(
                            command,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            deadline = time.monotonic() + timeout
            for index, process in enumerate(processes):
                remaining = max(deadline - time.monotonic(), 0.1)
                try:
                    code = process.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(
                        f"worker {index} did not finish within {timeout:.0f}"
                        f" s:\n{tail(out / f'worker{index}.log')}"
                    ) from None
                if code != 0:
                    raise RuntimeError(
                        f"worker {index} exited with {code}:\n"
                        + tail(out / f"worker{index}.log")
                    )
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        return [
            json.loads((out / f"result_worker{index}.json").read_text())
            for index in range(2)
        ]


def worker_main(args: argparse.Namespace) -> None:
    """One worker of the two-worker cluster described by `TF_CONFIG`.

    Trains as the driver does and writes its result as JSON to
    `args.worker_dir`.

    Args:
        args: Command-line arguments, with `worker_dir`.
    """
    # First TensorFlow call of the process: collective ops are configured
    # at program startup.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = strategy.cluster_resolver.task_id
    data = load_data(args.rows, args.global_batch, args.seed)
    result = train(strategy, data, args, steps_per_execution=1)
    result["is_chief"] = bool(strategy.extended.should_checkpoint)
    path = Path(args.worker_dir) / f"result_worker{task}.json"
    path.with_suffix(".tmp").write_text(json.dumps(result))
    path.with_suffix(".tmp").replace(path)


# ------------------------------------------------------------------ driver
def print_table(results: dict, metrics: dict) -> None:
    """Prints per setting: multiplier, DP gaps, accuracy, distance.

    Args:
        results: `train` results by setting.
        metrics: `test_metrics` results by setting.
    """
    reference = flat_state(results[SETTINGS[0]])
    header = (
        f"{'setting':18s} {'repl.':>5s} {'spe':>3s} {'fit s':>6s} "
        f"{'multiplier':>10s} {'train DP':>8s} {'test DP':>7s} "
        f"{'test acc':>8s} {'max |Δ|':>8s}"
    )
    print(header)
    print("-" * len(header))
    for setting in SETTINGS:
        result = results[setting]
        difference = np.max(np.abs(flat_state(result) - reference))
        train_gap = result["history"][CONSTRAINT][-1]
        print(
            f"{setting:18s} {result['replicas']:5d} "
            f"{result['steps_per_execution']:3d} {result['seconds']:6.1f} "
            f"{max(result['multiplier']):10.4f} {train_gap:8.4f} "
            f"{metrics[setting]['dp_gap']:7.4f} "
            f"{metrics[setting]['accuracy']:8.4f} {difference:8.2g}"
        )
    print(
        f"\nmultiplier: the largest entry of the final multiplier; train "
        f"DP: the gap over the\nlast epoch's batches (training log); test "
        f"DP / acc: final weights on the test\nsplit (bound {BOUND}); "
        f"max |Δ|: largest difference of any weight or multiplier to\n"
        f"the one-device run; fit s: seconds in `fit` (spe: "
        f"steps_per_execution)."
    )


def save_plot(results: dict, path: Path) -> None:
    """Saves the DP gap and the multiplier per epoch, one line per setting.

    Args:
        results: `train` results by setting.
        path: Where to write the PNG (its folder is created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = (("-", "o", 9), ("--", "s", 6), (":", "^", 4))
    for setting, (line, marker, size) in zip(SETTINGS, styles):
        history = results[setting]["history"]
        epochs = np.arange(1, len(history[CONSTRAINT]) + 1)
        for axis, key in zip(axes, (CONSTRAINT, f"{CONSTRAINT}_multiplier")):
            axis.plot(
                epochs,
                history[key],
                ls=line,
                marker=marker,
                markersize=size,
                label=setting,
            )
    axes[0].axhline(BOUND, color="black", lw=0.8, ls="--", label="bound")
    axes[0].set_title("DP gap (training epoch)")
    # Keras logs a vector multiplier as the mean of its entries.
    axes[1].set_title("multiplier (logged: mean of its 2 entries)")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    figure.suptitle("Same global batch, seed and data order")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def driver_main(args: argparse.Namespace, argv: list[str]) -> None:
    """Trains on one device and two replicas, then runs the two workers.

    Args:
        args: Parsed command-line arguments.
        argv: The raw arguments, passed on to the workers.
    """
    # Before any TensorFlow op: split the CPU into two logical devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    # A SIGTERM runs the `finally` blocks too (the workers get killed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    start = time.perf_counter()
    data = load_data(args.rows, args.global_batch, args.seed)
    print(
        f"UCI Adult: {len(data.y_train)} train rows in "
        f"{len(data.y_train) // args.global_batch} global batches of "
        f"{args.global_batch}, {len(data.y_test)} test rows, {args.epochs} "
        f"epochs, DP gap <= {BOUND}",
        flush=True,
    )
    results = {}
    results[SETTINGS[0]] = train(
        tf.distribute.get_strategy(), data, args, steps_per_execution=32
    )
    print(f"  trained on 1 device ({time.perf_counter() - start:.0f} s)")
    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    results[SETTINGS[1]] = train(mirrored, data, args, steps_per_execution=1)
    print(f"  trained on 2 replicas ({time.perf_counter() - start:.0f} s)")
    try:
        workers = run_workers(argv, args.timeout)
    except RuntimeError as error:
        sys.exit(f"The two-worker run failed: {error}")
    print(f"  trained on 2 workers ({time.perf_counter() - start:.0f} s)")
    results[SETTINGS[2]] = workers[0]
    metrics = {name: test_metrics(r, data) for name, r in results.items()}

    print()
    print_table(results, metrics)
    between = np.max(np.abs(flat_state(workers[0]) - flat_state(workers[1])))
    print(
        f"The two workers (chief: {[w['is_chief'] for w in workers]}) end "
        f"with states {between:.2g} apart."
    )
    save_plot(results, args.plot)
    print(f"\nPlot: {args.plot}")
    print(f"Total time: {time.perf_counter() - start:.0f} s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses the command line (`--quick` sets the smaller defaults).

    Args:
        argv: The arguments.

    Returns:
        The namespace, every size and count filled in.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"epochs": 4, "global_batch": 256, "rows": 8192, "timeout": 120}
    full = {"epochs": 10, "global_batch": 512, "rows": None, "timeout": 600}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    """Driver, or (with `--worker-dir`, started by the driver) a worker.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker_dir is not None:
        worker_main(args)
    else:
        driver_main(args, argv)


if __name__ == "__main__":
    main()
