"""The Adult demographic-parity problem shared by both sides of `vs_cooper`.

Imports only numpy, so that the PyTorch worker (which has no TensorFlow) and
the TensorFlow side read the same arrays and score the same way.

Problem: an MLP `103 → 64 (ReLU) → 1 (sigmoid)` minimizes the mean binary
cross-entropy on the 30,162 Adult training rows subject to demographic
parity between the two sexes,

    r_g = (1/n_g) Σ_{i: s_i = g} ŷ_i,      r_0 - r_1 <= δ,   r_1 - r_0 <= δ,

with `ŷ_i = [p_i > 0.5]`, `δ = 0.05`. Both libraries solve it the same way:
alternating projected gradient descent-ascent on the Lagrangian, the dual
step `λ ← [λ + η·(r_g - r_h - δ)]₊` on the hard rates of the batch, the
primal step (Adam) on `f + Σ λ·(r̃_g - r̃_h - δ)` with the surrogate rates
`r̃` that use the probability `p_i` in place of `ŷ_i`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64
BATCH = 256
BOUND = 0.05
LEARNING_RATE = 1e-3
# Adam's ε as Keras sets it (PyTorch's default is 1e-8).
ADAM_EPSILON = 1e-7
DUAL_LEARNING_RATE = 0.05


def load_adult():
    """`tfc.datasets.load_adult()` without importing TensorFlow.

    Loads `tfconstrain/datasets/adult.py` (numpy only) straight from its
    file, so the preprocessing is the library's own.
    """
    path = ROOT / "tfconstrain" / "datasets" / "adult.py"
    spec = importlib.util.spec_from_file_location("_tfc_adult", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_adult()


def fairness_metrics(probabilities, labels, groups) -> dict:
    """Accuracy and demographic-parity gap `|r_0 - r_1|` of `p > 0.5`."""
    predicted = np.asarray(probabilities).reshape(-1) > 0.5
    labels = np.asarray(labels).reshape(-1) > 0.5
    rates = [predicted[groups == g].mean() for g in (0, 1)]
    return {
        "accuracy": float((predicted == labels).mean()),
        "dp_gap": float(abs(rates[0] - rates[1])),
        "positive_rate": float(predicted.mean()),
    }


def scores(predict, data) -> dict:
    """Train and test metrics of a `predict(x) -> probabilities` function."""
    return {
        split: fairness_metrics(
            predict(getattr(data, f"x_{split}")),
            getattr(data, f"y_{split}"),
            getattr(data, f"sex_{split}"),
        )
        for split in ("train", "test")
    }
