"""Robustness and causal constraints on UCI Adult (income > 50K).

A small MLP classifier on the Adult census data shipped with tfconstrain
(`tfc.datasets`, no network), under three constraints on how it responds to
its inputs:

- monotonicity: the predicted probability must not decrease with education
  (`education_num`) or with hours per week
  (`tfc.constraints.Monotonicity`, mean wrong-sign derivative <= 0);
- counterfactual invariance: flipping `sex` (everything else held fixed)
  must move the predicted probability by at most 0.01 on average
  (`tfc.constraints.CounterfactualInvariance`);
- input-gradient norm: the mean norm of the gradient of the predicted
  probability with respect to the (standardised) input must be at most 0.2
  (`tfc.constraints.InputGradientNorm`, a local Lipschitz bound).

The model input is the library's feature matrix with two changes: `sex` is
one 0/1 column (Female/Male) instead of two one-hot columns, so that
"flip" is a valid intervention, and the one-hot `education=...` columns are
dropped, since they duplicate `education_num` and would let the model be
non-monotone in education through them.

For each constraint the same network is trained three ways: unconstrained
(shared by the three comparisons), with a fixed penalty `loss + c · v`
(`tfc.Penalty(c)`, one c for all), and as a `ConstrainedModel` with
`compile()` defaults (Lagrangian, default dual optimizer). Every trained
network is then evaluated on the held-out test split against all three
constraints with `constraint_report`, and the script prints, per
constraint, the train and test values, the test violation and the test
accuracy side by side. A bar chart is saved to `--plot`.

Usage:

    python examples/robustness_causal.py            # full data, ~1-2 min
    python examples/robustness_causal.py --quick    # subsample, < 1 min
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402

DEFAULT_PLOT = Path(__file__).resolve().parent / "output" / "robustness.png"
CF_BOUND = 0.01
GRADIENT_BOUND = 0.2
PENALTY = 1.0
BATCH_SIZE = 256
# The constraints by their report names, in table order, with a title.
TITLES = {
    "monotonicity": "Monotonicity (education, hours per week) <= 0",
    "counterfactual_invariance": f"CounterfactualInvariance(sex) <= {CF_BOUND}",
    "input_gradient_norm": f"InputGradientNorm() <= {GRADIENT_BOUND}",
}
METHODS = ("unconstrained", f"Penalty({PENALTY:g})", "constrained")


class Data(NamedTuple):
    """Adult prepared for the three constraints.

    Attributes:
        x_train, y_train, x_test, y_test: Features (float32 `(n, d)`) and
            0/1 labels (float32 `(n,)`).
        education: Column of `education_num` (standardised).
        hours: Column of `hours_per_week` (standardised).
        sex: Column of `sex` (0 = Female, 1 = Male).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    education: int
    hours: int
    sex: int


def load_data(train_size: int | None, test_size: int | None, seed: int) -> Data:
    """Loads Adult with one 0/1 `sex` column and no education one-hots.

    Args:
        train_size: Number of training rows to sample (None: all).
        test_size: Number of test rows to sample (None: all).
        seed: Seed of the subsampling.

    Returns:
        A `Data` tuple.
    """
    adult = tfc.datasets.load_adult()
    names = list(adult.feature_names)
    keep = [
        i
        for i, name in enumerate(names)
        if not name.startswith(("sex=", "education="))
    ]
    kept = [names[i] for i in keep]

    def features(x: np.ndarray, sex: np.ndarray) -> np.ndarray:
        return np.column_stack([x[:, keep], sex]).astype(np.float32)

    rng = np.random.default_rng(seed)

    def rows(size: int | None, total: int) -> np.ndarray:
        if size is None or size >= total:
            return np.arange(total)
        return np.sort(rng.choice(total, size, replace=False))

    train = rows(train_size, len(adult.y_train))
    test = rows(test_size, len(adult.y_test))
    return Data(
        x_train=features(adult.x_train, adult.sex_train)[train],
        y_train=adult.y_train[train],
        x_test=features(adult.x_test, adult.sex_test)[test],
        y_test=adult.y_test[test],
        education=kept.index("education_num"),
        hours=kept.index("hours_per_week"),
        sex=len(kept),
    )


def make_constraints(data: Data) -> dict[str, tfc.Constraint]:
    """The three constraints, by report name (fresh objects each call).

    Args:
        data: The prepared data (for the column indices).

    Returns:
        Dict `report name -> constraint` with its bound.
    """
    return {
        "monotonicity": tfc.constraints.Monotonicity(
            [data.education, data.hours], "increasing"
        ),
        "counterfactual_invariance": (
            tfc.constraints.CounterfactualInvariance(data.sex) <= CF_BOUND
        ),
        "input_gradient_norm": (
            tfc.constraints.InputGradientNorm() <= GRADIENT_BOUND
        ),
    }


def build_network(num_features: int, seed: int) -> keras.Model:
    """The classifier: a plain Keras MLP with a sigmoid output.

    Args:
        num_features: Width of the input.
        seed: Seed of the initial weights.

    Returns:
        An uncompiled `keras.Model`.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return keras.Model(inputs, outputs, name="mlp")


def wrap(
    network: keras.Model, constraints: list[tfc.Constraint]
) -> tfc.ConstrainedModel:
    """A `ConstrainedModel` around `network` (sharing its weights).

    Args:
        network: The classifier.
        constraints: Constraints to add (none: a plain model).

    Returns:
        The uncompiled `ConstrainedModel`.
    """
    inputs = keras.Input(network.input_shape[1:], name="features")
    model = tfc.ConstrainedModel(inputs, network(inputs))
    for constraint in constraints:
        model.add_constraint(constraint)
    return model


def train(
    data: Data,
    method: str,
    constraint: tfc.Constraint | None,
    epochs: int,
    seed: int,
) -> tuple[keras.Model, dict]:
    """Trains one network.

    Args:
        data: The prepared data.
        method: One of `METHODS`: the formulation to train with.
        constraint: The constraint to train under, or `None`.
        epochs: Number of epochs.
        seed: Seed of the initial weights.

    Returns:
        `(network, multipliers)`: the trained classifier and the final
        multipliers (numpy) by constraint name.
    """
    network = build_network(data.x_train.shape[1], seed)
    model = wrap(network, [] if constraint is None else [constraint])
    steps = epochs * -(-len(data.y_train) // BATCH_SIZE)
    kwargs = {}
    if method.startswith("Penalty"):
        kwargs["formulation"] = tfc.Penalty(PENALTY)
    # "constrained": `compile()` defaults for the formulation and the dual
    # optimizer.
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(2e-3, steps)
        ),
        loss="binary_crossentropy",
        steps_per_execution=32,
        **kwargs,
    )
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        verbose=0,
    )
    multipliers = {
        name: np.asarray(value) for name, value in model.multipliers.items()
    }
    return network, multipliers


def evaluate(network: keras.Model, data: Data) -> dict:
    """Every constraint on the train and test splits, and test accuracy.

    The network is wrapped in a fresh `ConstrainedModel` carrying all three
    constraints (sharing the trained weights), whose `constraint_report`
    gives the exact dataset values.

    Args:
        network: A trained classifier.
        data: The prepared data.

    Returns:
        `{"train": report rows, "test": report rows, "accuracy": float}`,
        the rows keyed by `(constraint, entry)`.
    """
    evaluator = wrap(network, list(make_constraints(data).values()))
    evaluator.compile(loss="binary_crossentropy", formulation=tfc.Penalty(0))
    result = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        # One batch per split: the model is small, and one trace suffices.
        report = evaluator.constraint_report((x, y), batch_size=len(y))
        result[split] = {
            (row["constraint"], row["entry"]): row for row in report.rows()
        }
    probability = network(data.x_test, training=False).numpy()
    result["accuracy"] = float(
        np.mean((probability[:, 0] > 0.5) == (data.y_test == 1))
    )
    return result


def entry_label(data: Data, entry) -> str:
    """A readable name for a report entry.

    Args:
        data: The prepared data (for the column indices).
        entry: A report row's `entry`: `None` or `"<column> (<direction>)"`.

    Returns:
        The feature's name, or `""` for scalar constraints.
    """
    if entry is None:
        return ""
    column = int(str(entry).split()[0])
    names = {data.education: "education", data.hours: "hours/week"}
    return names.get(column, str(entry))


def print_table(data: Data, results: dict, multipliers: dict) -> None:
    """Prints one block per constraint: its three runs side by side.

    Args:
        data: The prepared data.
        results: `evaluate` results by run key.
        multipliers: Final multipliers by run key.
    """
    header = (
        f"{'run':14s} {'entry':10s} {'train':>9s} {'test':>9s} "
        f"{'test viol.':>10s} {'ok':>3s} {'multiplier':>10s} "
        f"{'test acc':>8s}"
    )
    for name, title in TITLES.items():
        print(f"\n{title}")
        print(header)
        print("-" * len(header))
        for method in METHODS:
            key = "unconstrained" if method == METHODS[0] else (method, name)
            result = results[key]
            lambdas = multipliers[key].get(name)
            rows = [k for k in result["test"] if k[0] == name]
            for i, row_key in enumerate(rows):
                test = result["test"][row_key]
                if lambdas is None:
                    multiplier = "-"
                else:
                    multiplier = f"{np.ravel(lambdas)[i]:.4g}"
                accuracy = f"{result['accuracy']:.4f}" if i == 0 else ""
                line = (
                    f"{method if i == 0 else '':14s} "
                    f"{entry_label(data, row_key[1]):10s} "
                    f"{result['train'][row_key]['value']:9.3g} "
                    f"{test['value']:9.3g} {test['violation']:10.3g} "
                    f"{'yes' if test['satisfied'] else 'no':>3s} "
                    f"{multiplier:>10s} {accuracy:>8s}"
                )
                print(line.rstrip())
    print(
        "\ntrain/test: the constraint's value on each split.\n"
        "test viol.: max(0, test value - bound); ok: within the tolerance "
        "(1e-4).\nmultiplier: the final one (for the penalty, its fixed c)."
    )


def save_plot(data: Data, results: dict, path: Path) -> None:
    """Saves bars of each constraint's test value and the test accuracy.

    Args:
        data: The prepared data.
        results: `evaluate` results by run key.
        path: Where to write the PNG (its folder is created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("monotonicity", data.education, "monotone in education"),
        ("monotonicity", data.hours, "monotone in hours/week"),
        ("counterfactual_invariance", None, "counterfactual (sex)"),
        ("input_gradient_norm", None, "input-gradient norm"),
    ]
    colors = ("tab:gray", "tab:orange", "tab:blue")
    figure, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    for axis, (name, column, title) in zip(axes, panels):
        rows = []
        for method in METHODS:
            key = "unconstrained" if method == METHODS[0] else (method, name)
            rows.extend(
                row
                for (constraint, entry), row in results[key]["test"].items()
                if constraint == name
                and (column is None or str(entry).startswith(f"{column} "))
            )
        axis.bar(METHODS, [r["value"] for r in rows], color=colors)
        axis.axhline(rows[0]["bound"], color="black", ls="--", label="bound")
        axis.set_title(title, fontsize=10, pad=14)
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    axes[0].set_ylabel("test value")
    axes[0].legend(fontsize=8)
    width = 0.25
    for j, method in enumerate(METHODS):
        keys = [
            "unconstrained" if j == 0 else (method, name) for name in TITLES
        ]
        axes[4].bar(
            np.arange(3) + (j - 1) * width,
            [results[key]["accuracy"] for key in keys],
            width,
            color=colors[j],
            label=method,
        )
    axes[4].set_xticks(np.arange(3), ["monotone", "counterf.", "grad. norm"])
    low = min(r["accuracy"] for r in results.values())
    axes[4].set_ylim(low - 0.02, None)
    axes[4].set_title("test accuracy", fontsize=10)
    axes[4].legend(fontsize=8)
    figure.suptitle("UCI Adult: held-out constraint values (test split)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Trains the seven runs, prints the table and saves the plot.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="subsample, 6 epochs"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tf.get_logger().setLevel("ERROR")  # no retracing warnings
    if args.quick:
        epochs = args.epochs or 6
        data = load_data(12000, 5000, args.seed)
    else:
        epochs = args.epochs or 15
        data = load_data(None, None, args.seed)
    print(
        f"UCI Adult: {len(data.y_train)} train / {len(data.y_test)} test "
        f"rows, {data.x_train.shape[1]} features, {epochs} epochs, batch "
        f"{BATCH_SIZE}"
    )

    results, multipliers = {}, {}
    runs = [("unconstrained", None)] + [
        (method, name) for name in TITLES for method in METHODS[1:]
    ]
    for method, name in runs:
        constraint = None if name is None else make_constraints(data)[name]
        key = method if name is None else (method, name)
        network, multipliers[key] = train(
            data, method, constraint, epochs, args.seed
        )
        results[key] = evaluate(network, data)
        print(
            f"  trained {method}"
            + ("" if name is None else f" / {name}")
            + f" ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        keras.backend.clear_session()

    print_table(data, results, multipliers)
    save_plot(data, results, args.plot)
    print(f"\nPlot: {args.plot}")
    print(f"Total time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
