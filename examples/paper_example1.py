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
"""

import argparse
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and runs"
    )
    args = parser.parse_args()
    steps = 2000 if args.quick else 10_000
    epsilons = [0.5] if args.quick else [0.2, 0.5, 0.8]

    header = f"{'ε':>4} {'method':<28} {'x':>8} {'λ':>8} {'|x-x*|':>9}"
    print(header)
    print("-" * len(header))
    for epsilon in epsilons:
        x_star = math.asin(epsilon)
        lambda_star = epsilon / math.sqrt(1.0 - epsilon**2)
        penalty = max(2.0 * (1.0 - epsilon**2) ** -1.5, 5.0)
        runs = {
            "gradient ascent η=0.3": dict(dual_optimizer=0.3),
            "νPI η=0.3 κp=40": dict(
                dual_optimizer=tfc.optimizers.NuPI(0.3, kp=40.0)
            ),
            # The classical ALM step λ ← [λ + c·v]₊ needs a primal step
            # large enough to follow it.
            f"augmented Lagrangian c={penalty:.2f}": dict(
                formulation=tfc.AugmentedLagrangian(penalty),
                learning_rate=0.1,
            ),
        }
        coefficients = [0.1, 1.0, 10.0] if args.quick else [0.01, 0.1, 1, 10]
        for c in coefficients:
            runs[f"fixed penalty c={c:g}"] = dict(formulation=tfc.Penalty(c))
        print(f"{epsilon:>4} {'solution':<28} {x_star:8.4f} {lambda_star:8.4f}")
        for label, kwargs in runs.items():
            x, _, multiplier = solve(epsilon, steps, **kwargs)
            print(
                f"{'':>4} {label:<28} {x:8.4f} {multiplier:8.4f} "
                f"{abs(x - x_star):9.2e}"
            )


if __name__ == "__main__":
    main()
