"""Paper Example 1: where gradient ascent oscillates and νPI / ALM converge.

    min (1 + y²)·cos x   s.t.   (1 + y²)·sin x <= ε,   x ∈ [0, π/2]

The solution is y* = 0, x* = arcsin ε, with multiplier λ* = ε / √(1 - ε²).
The Lagrangian is concave in x, so for a fixed λ the primal step runs to an
end of [0, π/2]:

- a fixed penalty (`tfc.Penalty(c)`) ends at x = 0 or x = π/2 for every c;
- gradient descent-ascent (`dual_optimizer=η`) oscillates forever;
- νPI (`tfc.optimizers.NuPI(0.3, kp=40)`) and the augmented Lagrangian
  (`tfc.AugmentedLagrangian(c)` with c > (1 - ε²)^(-3/2)) converge.

Run:

    python examples/paper_example1.py            # 10 000 steps per run
    python examples/paper_example1.py --quick    # 2 000 steps, fewer runs
    python examples/paper_example1.py --plot example1.png

The figure (`--plot PATH`, default under the temporary directory) shows
the final x, λ, objective f and constraint g of every run against ε, over
the closed-form solution x* = arcsin ε, λ* = ε / √(1 - ε²),
f* = √(1 - ε²), g* = ε.
"""

import argparse
import math
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402

DEFAULT_PLOT = os.path.join(
    tempfile.gettempdir(), "tfconstrain_examples", "paper_example1.png"
)


class Box(keras.constraints.Constraint):
    """Projection of the weights onto `[lower, upper]` after every step."""

    def __init__(self, lower, upper):
        self.lower = lower
        self.upper = upper

    def __call__(self, w):
        return tf.clip_by_value(w, self.lower, self.upper)


class Point(keras.layers.Layer):
    """Holds (x, y); outputs them for every row of the (dummy) batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.z = self.add_weight(
            shape=(2,),
            initializer=keras.initializers.Constant([0.5, 0.5]),
            constraint=Box([0.0, -1e6], [math.pi / 2, 1e6]),
            name="z",
        )

    def call(self, inputs):
        return tf.zeros((tf.shape(inputs)[0], 1)) + self.z


def objective(y_true, y_pred):
    x, y = y_pred[:, 0], y_pred[:, 1]
    return (1.0 + y**2) * tf.cos(x)


def constraint(batch):
    x, y = batch.y_pred[:, 0], batch.y_pred[:, 1]
    return tf.reduce_mean((1.0 + y**2) * tf.sin(x))


def solve(epsilon, steps, learning_rate=0.01, **compile_kwargs):
    """Runs `steps` full-batch steps; returns (x, y, λ)."""
    keras.backend.clear_session()
    inputs = keras.Input((1,))
    point = Point()
    model = tfc.ConstrainedModel(inputs, point(inputs))
    model.add_constraint(constraint, "<=", epsilon, name="g")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=objective,
        steps_per_execution=500,
        **compile_kwargs,
    )
    dummy = np.zeros((1, 1), "float32")
    data = tf.data.Dataset.from_tensors((dummy, dummy)).repeat(steps)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    x, y = point.z.numpy()
    return float(x), float(y), float(model.multipliers["g"].numpy())


def plot(path, results, epsilons):
    """Saves the final x, λ, f and g of every run against ε to a PNG.

    Args:
        path: Where to write the figure.
        results: Dict `method -> {ε: (x, y, λ)}`.
        epsilons: The values of ε that were run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, max(0.9, max(epsilons)), 200)
    closed_forms = {
        "x": np.arcsin(grid),
        "λ": grid / np.sqrt(1.0 - grid**2),
        "f": np.sqrt(1.0 - grid**2),
        "g": grid,
    }
    titles = {
        "x": "x (x* = arcsin ε; dotted: the box [0, π/2])",
        "λ": "λ (λ* = ε / √(1 - ε²); fixed penalties: λ = c, not shown)",
        "f": "objective f = (1 + y²) cos x (f* = √(1 - ε²))",
        "g": "constraint g = (1 + y²) sin x (bound: g <= ε)",
    }
    # λ of an oscillating run can be far off the closed form's scale: such
    # points are drawn at the top of the panel, with their value.
    lambda_top = 1.25 * float(closed_forms["λ"].max())
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for axis, key in zip(axes.flat, closed_forms):
        axis.plot(grid, closed_forms[key], color="black", label="solution")
        markers = "osD^v<>"
        for index, (method, by_epsilon) in enumerate(results.items()):
            if key == "λ" and method.startswith("fixed penalty"):
                continue
            points = sorted(by_epsilon.items())
            x = np.array([point[1][0] for point in points])
            y = np.array([point[1][1] for point in points])
            values = {
                "x": x,
                "λ": np.array([point[1][2] for point in points]),
                "f": (1.0 + y**2) * np.cos(x),
                "g": (1.0 + y**2) * np.sin(x),
            }[key]
            epsilon_values = [point[0] for point in points]
            if key == "λ":
                for epsilon, value in zip(epsilon_values, values):
                    if value > lambda_top:
                        axis.annotate(
                            f"λ = {value:.3g} ↑",
                            (epsilon, lambda_top),
                            textcoords="offset points",
                            xytext=(-10, -4),
                            horizontalalignment="right",
                            fontsize=8,
                            color=f"C{index}",
                        )
                values = np.minimum(values, lambda_top)
            axis.plot(
                epsilon_values,
                values,
                linestyle="none",
                marker=markers[index % len(markers)],
                markersize=13 - 1.2 * index,
                fillstyle="none",
                markeredgewidth=1.5,
                color=f"C{index}",
                label=method,
            )
        axis.set_title(titles[key], fontsize=9)
        axis.grid(alpha=0.3)
    axes[0][1].set_ylim(-0.05 * lambda_top, 1.05 * lambda_top)
    for bound in (0.0, math.pi / 2):
        axes[0][0].axhline(bound, color="grey", linestyle=":", linewidth=1)
    for axis in axes[1]:
        axis.set_xlabel("ε")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.suptitle(
        "Example 1: min (1 + y²) cos x  s.t.  (1 + y²) sin x <= ε, "
        "x ∈ [0, π/2] (final iterates)"
    )
    figure.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and runs"
    )
    parser.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        metavar="PATH",
        help=f"where to save the figure (default: {DEFAULT_PLOT})",
    )
    args = parser.parse_args()
    steps = 2000 if args.quick else 10_000
    epsilons = [0.5] if args.quick else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]

    header = f"{'ε':>4} {'method':<28} {'x':>8} {'λ':>8} {'|x-x*|':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for epsilon in epsilons:
        x_star = math.asin(epsilon)
        lambda_star = epsilon / math.sqrt(1.0 - epsilon**2)
        penalty = max(2.0 * (1.0 - epsilon**2) ** -1.5, 5.0)
        # (label in the table, method in the plot's legend, arguments)
        runs = [
            ("gradient ascent η=0.3", None, dict(dual_optimizer=0.3)),
            (
                "νPI η=0.3 κp=40",
                None,
                dict(dual_optimizer=tfc.optimizers.NuPI(0.3, kp=40.0)),
            ),
            # The classical ALM step λ ← [λ + c·v]₊ needs a primal step
            # large enough to follow it.
            (
                f"augmented Lagrangian c={penalty:.2f}",
                "augmented Lagrangian c=max(2(1-ε²)^-1.5, 5)",
                dict(
                    formulation=tfc.AugmentedLagrangian(penalty),
                    learning_rate=0.1,
                ),
            ),
        ]
        coefficients = [0.1, 1.0, 10.0] if args.quick else [0.01, 0.1, 1, 10]
        for c in coefficients:
            runs.append(
                (
                    f"fixed penalty c={c:g}",
                    None,
                    dict(formulation=tfc.Penalty(c)),
                )
            )
        print(f"{epsilon:>4} {'solution':<28} {x_star:8.4f} {lambda_star:8.4f}")
        for label, method, kwargs in runs:
            x, y, multiplier = solve(epsilon, steps, **kwargs)
            results.setdefault(method or label, {})[epsilon] = (
                x,
                y,
                multiplier,
            )
            print(
                f"{'':>4} {label:<28} {x:8.4f} {multiplier:8.4f} "
                f"{abs(x - x_star):9.2e}"
            )
    plot(args.plot, results, epsilons)
    print(f"\nPlot: {args.plot}")


if __name__ == "__main__":
    main()
