"""The paper's point on one screen: constraints instead of penalty weights.

A small classifier on an imbalanced, noisy two-class problem generated in code
(scikit-learn's `make_classification`, fixed seed) must catch the rare class:
recall >= 0.90 on the training set. Three runs of the same model:

1. unconstrained (plain cross-entropy);
2. a fixed penalty `loss + c · (0.98 - recall)` (`tfc.Penalty(c)`), the
   hand-tuned baseline;
3. `tfc.ConstrainedModel` with the Lagrangian: the multiplier is learned.

Recall is a 0/1 rate (no gradient): the dual step and the report use the true
recall, the primal step a smooth proxy (mean predicted probability on the
positives). Run: `python3 dev.py demo` (add `--quick` for a short run).
The constrained run's recall against its bound and its multiplier over the
epochs are saved as a figure (`--plot PATH`, default under the temporary
directory; `tfc.plot.training_dynamics`).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tfconstrain as tfc  # noqa: E402

TARGET_RECALL = 0.90
DEFAULT_PLOT = os.path.join(
    tempfile.gettempdir(), "tfconstrain_examples", "demo.png"
)


class Recall(tfc.constraints.CountConstraint):
    """Recall of the positive class, exact over any number of batches.

    Counts: (true positives, positives), summed over batches before the
    ratio is taken. The dual step counts hard decisions (p > 0.5); the primal
    step the same ratio with the predicted probability as a smooth decision.
    (`tfc.constraints.Recall` is the built-in version of this constraint.)
    """

    def statistics_shapes(self):
        return ((), ())

    def counts(self, batch, hard):
        y = tf.reshape(tf.cast(batch.y, tf.float32), [-1])
        p = tf.reshape(tf.cast(batch.y_pred, tf.float32), [-1])
        decision = tf.cast(p > 0.5, tf.float32) if hard else p
        return (tf.reduce_sum(y * decision), tf.reduce_sum(y))

    def result(self, statistics):
        hits, positives = statistics
        return tf.math.divide_no_nan(hits, positives)


def load_data():
    features, labels = make_classification(
        n_samples=4000,
        n_features=20,
        n_informative=6,
        weights=[0.8, 0.2],
        flip_y=0.05,
        class_sep=0.7,
        random_state=0,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    prepare = lambda a: ((a - mean) / std).astype("float32")  # noqa: E731
    return (
        prepare(x_train),
        y_train[:, None].astype("float32"),
        prepare(x_test),
        y_test[:, None].astype("float32"),
    )


def build(formulation, dual_optimizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    if formulation is not None:
        # Logged and reported as "recall" (the class's snake-case name).
        model.add_constraint(Recall() >= TARGET_RECALL)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss="binary_crossentropy",
            metrics=["accuracy"],
            formulation=formulation,
            dual_optimizer=dual_optimizer,
        )
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
    return model


def recall_of(model, x, y):
    predictions = model.predict(x, verbose=0) > 0.5
    positives = y[:, 0] == 1
    return float(predictions[positives].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        metavar="PATH",
        help=f"where to save the figure (default: {DEFAULT_PLOT})",
    )
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.quick else 20)
    x_train, y_train, x_test, y_test = load_data()

    runs = [
        ("unconstrained", None, None),
        ("fixed penalty c=0.5", tfc.Penalty(0.5), None),
        ("constrained (Lagrangian)", tfc.Lagrangian(), 1.0),
    ]
    rows = []
    constrained_history = None
    for title, formulation, dual in runs:
        print(f"\n=== {title} ===")
        model = build(formulation, dual)
        history = model.fit(
            x_train, y_train, batch_size=64, epochs=epochs, verbose=1
        )
        if dual is not None:
            constrained_history = history
        train_recall = recall_of(model, x_train, y_train)
        test_recall = recall_of(model, x_test, y_test)
        accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)[
            "accuracy"
        ]
        multiplier = (
            float(model.multipliers["recall"].numpy())
            if model.multipliers
            else float("nan")
        )
        rows.append((title, accuracy, train_recall, test_recall, multiplier))

    print(
        f"\nConstraint: recall >= {TARGET_RECALL} on the training set "
        "(rare class detected)."
    )
    header = (
        f"{'run':<26} {'test acc':>8} {'train recall':>12} "
        f"{'test recall':>11} {'multiplier':>10} {'satisfied':>9}"
    )
    print(header)
    print("-" * len(header))
    for title, accuracy, train_recall, test_recall, multiplier in rows:
        satisfied = "yes" if train_recall >= TARGET_RECALL else "no"
        print(
            f"{title:<26} {accuracy:>8.3f} {train_recall:>12.3f} "
            f"{test_recall:>11.3f} {multiplier:>10.3f} {satisfied:>9}"
        )
    print(
        "\nThe penalty's weight is a guess that must be re-tuned per target; "
        "the Lagrangian learns it (the multiplier column) in one run."
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    tfc.plot.training_dynamics(constrained_history, save_path=args.plot)
    print(f"\nPlot: {args.plot}")


if __name__ == "__main__":
    main()
