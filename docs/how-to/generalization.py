"""Constraints on unseen data: the recipes of docs/how-to/generalization.md.

A rate constraint (recall >= bound) is met on the training set; does it hold
on the test set? For two tasks and five seeds each, this script trains the
same model with each recipe and prints test recall and test accuracy:

- `train`: constrained on the whole training set, the best epoch feasible
  on the training set restored (`BestFeasibleWeights`, validated on the
  training data itself);
- `select`: 20 % of the training set held out; constrained on the other
  80 %, the best epoch feasible *on the held-out split* restored;
- `margin`: as `train`, with the bound raised by `--margin`;
- `dual`: 20 % held out; the dual steps measure the constraint on the
  held-out split (`MultiplierCallback(dual_data=...)`, Cotter et al., 2019)
  while the primal steps train on the other 80 %; the final weights are
  kept;
- `dual_margin`: as `dual`, with the bound raised by `--dual-margin`;
- `oracle` (not in the defaults; a reference, not a recipe): the
  unconstrained model with its threshold chosen on the test set so that
  test recall is `bound - 0.01`: the accuracy such a model can have there.

Where `MultiplierCallback` has no `dual_data` argument (tfconstrain before
0.2), `HeldOutDualSteps` below performs the same dual steps from a callback
(plain gradient ascent on the recall of the next held-out batch, before each
training step) and the JSON line says `"dual_steps": "callback"`.

Tasks: `demo` (examples/demo.py: an imbalanced make_classification task,
recall >= 0.90, 2,800 training rows) and `adult` (UCI Adult, recall >= 0.95,
a 5,000-row training subsample, the full 15,060-row test split).

Usage:

    python docs/how-to/generalization.py --task demo --seeds 0 1 2 3 4
    python docs/how-to/generalization.py --task adult --recipes train select
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402

RECIPES = ("train", "select", "margin", "dual", "dual_margin")


def demo_task(seed: int) -> dict:
    """examples/demo.py's data: fixed split; the seed moves the model."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

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
    return {
        "x_train": ((x_train - mean) / std).astype("float32"),
        "y_train": y_train.astype("float32")[:, None],
        "x_test": ((x_test - mean) / std).astype("float32"),
        "y_test": y_test.astype("float32")[:, None],
        "bound": 0.90,
        "hidden": 16,
        "learning_rate": 1e-2,
        "batch_size": 64,
        "epochs": 20,
        "dual_learning_rate": 1.0,
    }


def adult_task(seed: int) -> dict:
    """A 5,000-row training subsample of Adult (drawn with the seed)."""
    data = tfc.datasets.load_adult()
    rng = np.random.default_rng(1000 + seed)
    rows = rng.choice(len(data.y_train), 5000, replace=False)
    return {
        "x_train": data.x_train[rows],
        "y_train": data.y_train[rows, None],
        "x_test": data.x_test,
        "y_test": data.y_test[:, None],
        "bound": 0.95,
        "hidden": 64,
        "learning_rate": 2e-3,
        "batch_size": 128,
        "epochs": 30,
        "dual_learning_rate": 1.0,
    }


TASKS = {"demo": demo_task, "adult": adult_task}


def stratified_split(y: np.ndarray, fraction: float, seed: int):
    """Indices `(fit, held_out)` with `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    held_out = []
    for label in (0.0, 1.0):
        rows = np.flatnonzero(y[:, 0] == label)
        held_out.append(
            rng.choice(rows, round(fraction * len(rows)), replace=False)
        )
    held_out = np.sort(np.concatenate(held_out))
    fit = np.setdiff1d(np.arange(len(y)), held_out)
    return fit, held_out


def recall_and_accuracy(model, x, y) -> tuple:
    predicted = model.predict(x, batch_size=4096, verbose=0)[:, 0] > 0.5
    positives = y[:, 0] == 1
    return (
        float(predicted[positives].mean()),
        float((predicted == positives).mean()),
    )


class HeldOutDualSteps(keras.callbacks.Callback):
    """Dual steps on held-out data, for `MultiplierCallback` without
    `dual_data`: `λ ← [λ + η·(bound − recall of the next held-out batch)]₊`
    before every training step (the model's own dual steps are switched
    off with `MultiplierCallback(warmup_steps=...)`)."""

    def __init__(self, x, y, batch_size: int, learning_rate: float):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size, self.learning_rate = batch_size, learning_rate
        self.position = 0

    def on_train_batch_begin(self, batch, logs=None):
        rows = np.arange(self.position, self.position + self.batch_size)
        rows %= len(self.y)
        self.position += self.batch_size
        positives = self.y[rows, 0] == 1
        if not positives.any():
            return
        scores = self.model(self.x[rows], training=False).numpy()[:, 0]
        recall = float((scores[positives] > 0.5).mean())
        (constraint,) = self.model.constraints
        multiplier = self.model.multipliers[constraint.name]
        step = self.learning_rate * (float(constraint.bound) - recall)
        multiplier.assign(max(0.0, float(multiplier.numpy()) + step))


def oracle(task: dict, seed: int) -> dict:
    """A reference, not a recipe: the unconstrained model, its threshold
    chosen *on the test set* so that test recall is `bound - 0.01`."""
    keras.utils.set_random_seed(seed)
    x, y = task["x_train"], task["y_train"]
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(task["hidden"], activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(task["learning_rate"]),
        loss="binary_crossentropy",
    )
    model.fit(
        x, y, batch_size=task["batch_size"], epochs=task["epochs"], verbose=0
    )
    scores = model.predict(task["x_test"], batch_size=4096, verbose=0)[:, 0]
    positives = task["y_test"][:, 0] == 1
    threshold = np.quantile(scores[positives], 1.0 - (task["bound"] - 0.01))
    predicted = scores >= threshold
    keras.backend.clear_session()
    return {
        "recipe": "oracle",
        "seed": seed,
        "bound": task["bound"],
        "test_recall": float(predicted[positives].mean()),
        "test_accuracy": float((predicted == positives).mean()),
    }


def has_dual_data() -> bool:
    parameters = inspect.signature(tfc.MultiplierCallback).parameters
    return "dual_data" in parameters


def run(task: dict, recipe: str, seed: int, margins: dict) -> dict:
    keras.utils.set_random_seed(seed)
    x, y = task["x_train"], task["y_train"]
    bound = task["bound"] + margins.get(recipe, 0.0)
    if recipe in ("select", "dual", "dual_margin"):
        fit_rows, held_out = stratified_split(y, 0.2, seed)
        x_fit, y_fit = x[fit_rows], y[fit_rows]
        validation = (x[held_out], y[held_out])
    else:
        x_fit, y_fit = x, y
        validation = (x, y)  # selection on the training set itself
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(task["hidden"], activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(tfc.constraints.Recall() >= bound)
    model.compile(
        optimizer=keras.optimizers.Adam(task["learning_rate"]),
        loss="binary_crossentropy",
        dual_optimizer=task["dual_learning_rate"],
    )
    best = tfc.BestFeasibleWeights(monitor="val_loss")
    dual_steps = None
    if recipe.startswith("dual"):
        if has_dual_data():
            dual_steps = "dual_data"
            held_out_batches = tf.data.Dataset.from_tensor_slices(validation)
            callbacks = [
                tfc.MultiplierCallback(
                    dual_data=held_out_batches.batch(task["batch_size"])
                )
            ]
        else:
            dual_steps = "callback"
            callbacks = [
                tfc.MultiplierCallback(warmup_steps=2**62),
                HeldOutDualSteps(
                    *validation, task["batch_size"], task["dual_learning_rate"]
                ),
            ]
    else:
        callbacks = [best]
    start = time.time()
    model.fit(
        x_fit,
        y_fit,
        batch_size=task["batch_size"],
        epochs=task["epochs"],
        validation_data=validation,
        validation_batch_size=4096,
        callbacks=callbacks,
        verbose=0,
    )
    train_recall, _ = recall_and_accuracy(model, x_fit, y_fit)
    held_recall, _ = recall_and_accuracy(model, *validation)
    test_recall, test_accuracy = recall_and_accuracy(
        model, task["x_test"], task["y_test"]
    )
    keras.backend.clear_session()
    return {
        "recipe": recipe,
        "seed": seed,
        "bound": task["bound"],
        "trained_bound": bound,
        "dual_steps": dual_steps,
        "selected_epoch": None
        if recipe.startswith("dual")
        else best.best_epoch,
        "train_recall": train_recall,
        "validation_recall": held_recall,
        "test_recall": test_recall,
        "test_accuracy": test_accuracy,
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="demo")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--margin", type=float, default=0.03)
    parser.add_argument("--dual-margin", type=float, default=0.02)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()
    margins = {"margin": args.margin, "dual_margin": args.dual_margin}
    for recipe in args.recipes:
        for seed in args.seeds:
            task = TASKS[args.task](seed)
            if recipe == "oracle":
                result = oracle(task, seed)
            else:
                result = run(task, recipe, seed, margins)
            result["task"] = args.task
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as file:
                    file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
