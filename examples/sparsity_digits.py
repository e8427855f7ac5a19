"""Controlled sparsity: an MLP on scikit-learn's digits keeps exactly half
of its hidden units.

The hidden layer is a `tfc.layers.L0Dense` with hard-concrete gates and the
constraint `density == 0.5`, where the density is the fraction of units
whose inference gate is non-zero (the units the pruned layer keeps). No
penalty coefficient is tuned: the multiplier is learned.

For comparison (without `--quick`), the same model is trained with fixed
penalty weights `c · density` (`tfc.Penalty(c)`), the baseline in which the
density you get depends on `c`.

Run:

    python examples/sparsity_digits.py            # full run (~1 min)
    python examples/sparsity_digits.py --quick    # 40 epochs (~15 s)
    python examples/sparsity_digits.py --plot sparsity.png

The figure (`--plot PATH`, default under the temporary directory) shows the
constrained run's density against its target and its multiplier (and the
augmented Lagrangian's penalty coefficient) over the epochs
(`tfc.plot.training_dynamics`); the full run adds the density of each fixed
penalty's run.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import tfconstrain as tfc  # noqa: E402

TARGET = 0.5
DEFAULT_PLOT = os.path.join(
    tempfile.gettempdir(), "tfconstrain_examples", "sparsity_digits.png"
)


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], digits.target[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def build_model(units: int = 64):
    inputs = keras.Input((64,))
    gated = tfc.layers.L0Dense(
        units, activation="relu", target_density=TARGET, name="hidden"
    )
    outputs = keras.layers.Dense(10, activation="softmax")(gated(inputs))
    return tfc.ConstrainedModel(inputs, outputs), gated


def train(formulation, dual_optimizer, epochs, data, seed=0):
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = data
    model, gated = build_model()
    model.compile(
        keras.optimizers.Adam(0.01),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        formulation=formulation,
        dual_optimizer=dual_optimizer,
    )
    history = model.fit(
        x_train, y_train, batch_size=128, epochs=epochs, verbose=0
    )
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    return {
        "density": float(gated.density()),
        "expected_density": float(gated.expected_density()),
        "test_accuracy": float(accuracy),
        "multiplier": float(model.multipliers["hidden_density"].numpy()),
        "trajectory": history.history["hidden_density"],
        "history": history,
    }


def plot(path: str, history, baselines: dict) -> None:
    """Saves the constrained run's training dynamics to a PNG.

    Args:
        path: Where to write the figure.
        history: The `History` of the constrained run.
        baselines: Results of the fixed penalties, by coefficient (their
            density per epoch is drawn with the constrained run's).
    """
    figure = tfc.plot.training_dynamics(history)
    # The multiplier stays below 0.1, the penalty coefficient is 10.
    figure.axes[1].set_yscale("log")
    figure.axes[1].set_ylabel("log scale")
    axis = figure.axes[0]
    axis.lines[0].set_label("constrained (learned multiplier)")
    for coefficient, baseline in baselines.items():
        trajectory = baseline["trajectory"]
        axis.plot(
            np.arange(1, len(trajectory) + 1),
            trajectory,
            linestyle="--",
            label=f"fixed penalty c={coefficient:g}",
        )
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="few epochs, no comparison"
    )
    parser.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        metavar="PATH",
        help=f"where to save the figure (default: {DEFAULT_PLOT})",
    )
    args = parser.parse_args(argv)
    data = load_data()
    epochs = 40 if args.quick else 60

    result = train(tfc.AugmentedLagrangian(penalty=10.0), 0.0005, epochs, data)
    print(f"Constraint: density == {TARGET} ({epochs} epochs)")
    print(
        "  density per 10 epochs: "
        + " ".join(f"{v:.3f}" for v in result["trajectory"][9::10])
    )
    print(
        f"  final density {result['density']:.3f} (expected density "
        f"{result['expected_density']:.3f}), test accuracy "
        f"{result['test_accuracy']:.3f}, multiplier "
        f"{result['multiplier']:.3f}"
    )
    baselines = {}
    if not args.quick:
        print("Fixed penalty c · density (tfc.Penalty), same model:")
        for coefficient in (0.1, 1.0, 10.0):
            baseline = train(tfc.Penalty(coefficient), None, epochs, data)
            baselines[coefficient] = baseline
            print(
                f"  c = {coefficient:>4}: density {baseline['density']:.3f}, "
                f"test accuracy {baseline['test_accuracy']:.3f}"
            )
    plot(args.plot, result["history"], baselines)
    print(f"\nPlot: {args.plot}")
    return result


if __name__ == "__main__":
    main()
