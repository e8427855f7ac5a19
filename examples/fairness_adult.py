"""Fair income classification on UCI Adult (demographic parity, EO).

Trains the same small MLP three times on the Adult census data shipped with
tfconstrain: without constraints, under demographic parity (gap of positive
prediction rates between sexes <= 0.05), and under equal opportunity (gap of
true-positive rates <= 0.05). Prints accuracy and both gaps on the training
and test splits.

The constrained runs validate on the training set at every epoch, and
`BestFeasibleWeights` restores the epoch with the lowest loss among those
whose exact training-set gap meets the bound (the last iterate of a
Lagrangian run can overshoot the bound by a little).

Each constrained run also writes TensorBoard logs (`--logdir`, one
sub-directory per run: `tensorboard --logdir DIR` shows each constraint's
value, bound and multiplier on one chart under *Custom Scalars*) and prints
a certified report on the *test* split: `constraint_report(...,
confidence=0.95)`, whose `worst_case` is the one-sided Clopper–Pearson bound
on each group's population rate and `certified` whether the gap still meets
the bound in the worst case.

Usage:

    python examples/fairness_adult.py            # ~30 s on 2 CPU cores
    python examples/fairness_adult.py --quick    # 3 epochs, a smoke run
    python examples/fairness_adult.py --plot fairness.png

The figure (`--plot PATH`, default under the temporary directory) shows,
for each constrained run, the gap on the training batches and on the
validation pass against its bound, and the multiplier, over the epochs
(`tfc.plot.training_dynamics`).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfconstrain as tfc  # noqa: E402
from tfconstrain.feasible import BestFeasibleWeights  # noqa: E402

DEFAULT_PLOT = os.path.join(
    tempfile.gettempdir(), "tfconstrain_examples", "fairness_adult.png"
)
DEFAULT_LOGDIR = os.path.join(
    tempfile.gettempdir(), "tfconstrain_examples", "fairness_adult_logs"
)


def build_model(num_features: int, seed: int) -> tfc.ConstrainedModel:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return tfc.ConstrainedModel(inputs, outputs)


def fairness_metrics(model, x, y, sex) -> dict:
    """Accuracy and the two gaps of hard predictions, in numpy."""
    predicted = model.predict(x, batch_size=4096, verbose=0)[:, 0] > 0.5
    selection = [predicted[sex == k].mean() for k in (0, 1)]
    recall = [predicted[(sex == k) & (y == 1)].mean() for k in (0, 1)]
    return {
        "accuracy": (predicted == (y == 1)).mean(),
        "dp_gap": abs(selection[0] - selection[1]),
        "eo_gap": abs(recall[0] - recall[1]),
    }


def train(
    data,
    constraint,
    epochs: int,
    batch_size: int,
    seed: int,
    log_dir: str | None = None,
):
    model = build_model(data.x_train.shape[1], seed)
    best = None
    callbacks = []
    fit_kwargs = {}
    x_train = {"features": data.x_train, "sex": data.sex_train}
    if constraint is not None:
        model.add_constraint(constraint)
        best = BestFeasibleWeights(monitor="val_loss")
        callbacks.append(best)
        if log_dir:
            callbacks.append(tfc.MultiplierCallback(log_dir=log_dir))
        fit_kwargs = {
            "validation_data": (x_train, data.y_train),
            "validation_batch_size": 4096,
        }
    steps = epochs * -(-len(data.y_train) // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(2e-3, steps)
        ),
        loss="binary_crossentropy",
        dual_optimizer=0.05,
    )
    history = model.fit(
        x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        callbacks=callbacks,
        verbose=0,
        **fit_kwargs,
    )
    return model, history, best


def plot(path: str, runs: list) -> None:
    """Saves the training dynamics of the constrained runs to a PNG.

    Args:
        path: Where to write the figure.
        runs: `(constraint, History, BestFeasibleWeights)` of every
            constrained run; their constraint logs are drawn one row each,
            with the epoch whose weights were restored marked.
    """
    logs, bounds = {}, {}
    for constraint, history, _ in runs:
        name = constraint.name
        for key, values in history.history.items():
            if key in (name, f"val_{name}") or key.startswith(f"{name}_"):
                logs[key] = values
        bounds[name] = (constraint.kind, constraint.bound)
    figure = tfc.plot.training_dynamics(
        logs,
        constraints=[constraint.name for constraint, _, _ in runs],
        bounds=bounds,
    )
    for row, (_, _, best) in zip(figure.axes[::2], runs):
        if best.best_epoch is not None:
            row.axvline(
                best.best_epoch + 1,
                color="grey",
                linestyle=":",
                label="restored epoch",
            )
            row.legend(loc="best", fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bound", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        metavar="PATH",
        help=f"where to save the figure (default: {DEFAULT_PLOT})",
    )
    parser.add_argument(
        "--logdir",
        default=DEFAULT_LOGDIR,
        metavar="DIR",
        help=f"TensorBoard logs (default: {DEFAULT_LOGDIR})",
    )
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    data = tfc.datasets.load_adult()
    runs = {
        "unconstrained": None,
        "demographic parity": (
            tfc.constraints.DemographicParity("sex") <= args.bound
        ),
        "equal opportunity": (
            tfc.constraints.EqualOpportunity("sex") <= args.bound
        ),
    }
    print(
        f"UCI Adult: {len(data.y_train)} train / {len(data.y_test)} test "
        f"rows, {epochs} epochs, bound {args.bound}"
    )
    header = f"{'':20s} {'split':6s} {'accuracy':>9s} {'DP gap':>8s} "
    print(header + f"{'EO gap':>8s}")
    histories = []
    for name, constraint in runs.items():
        log_dir = None
        if constraint is not None:
            log_dir = os.path.join(args.logdir, constraint.name)
        model, history, best = train(
            data, constraint, epochs, 512, args.seed, log_dir
        )
        for split in ("train", "test"):
            metrics = fairness_metrics(
                model,
                getattr(data, f"x_{split}"),
                getattr(data, f"y_{split}"),
                getattr(data, f"sex_{split}"),
            )
            print(
                f"{name:20s} {split:6s} {metrics['accuracy']:9.4f} "
                f"{metrics['dp_gap']:8.4f} {metrics['eo_gap']:8.4f}"
            )
        if constraint is not None:
            report = model.constraint_report(
                (
                    {"features": data.x_train, "sex": data.sex_train},
                    data.y_train,
                ),
                batch_size=4096,
            )[constraint.name]
            print(
                f"{'':20s} constraint_report (train): max gap "
                f"{np.max(report['value']):.4f}, satisfied "
                f"{report['satisfied']}"
            )
            certified = model.constraint_report(
                (
                    {"features": data.x_test, "sex": data.sex_test},
                    data.y_test,
                ),
                batch_size=4096,
                confidence=0.95,
            )
            print(f"Certified report on the test split ({name}):")
            print(str(certified))
            histories.append((constraint, history, best))
        keras.backend.clear_session()
    plot(args.plot, histories)
    print(f"\nPlot: {args.plot}")
    print(f"TensorBoard logs: {args.logdir}")


if __name__ == "__main__":
    main()
