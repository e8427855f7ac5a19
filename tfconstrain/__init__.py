"""tfconstrain: train Keras models under explicit constraints.

`model.fit` with constraints such as "DP gap <= 0.05" or "recall >= 0.95",
solved by Lagrangian methods (multipliers learned alongside the weights)
instead of hand-tuned penalty weights.
"""

import os as _os


def _backend_error(backend: str) -> ImportError:
    return ImportError(
        "tfconstrain requires the TensorFlow backend of Keras 3, but Keras "
        f"is set to use the '{backend}' backend. Set the environment "
        "variable KERAS_BACKEND=tensorflow before importing keras "
        "(currently KERAS_BACKEND="
        f"{_os.environ.get('KERAS_BACKEND', '<unset>')!r})."
    )


_requested = _os.environ.get("KERAS_BACKEND")
if _requested is not None and _requested.strip().lower() != "tensorflow":
    # Checked before importing keras: importing it with another backend may
    # fail on that backend's own missing packages first.
    raise _backend_error(_requested)

try:
    import tensorflow as _tf  # noqa: E402, F401
except ModuleNotFoundError as _error:  # pragma: no cover - install dependent
    raise ImportError(
        "tfconstrain needs TensorFlow, which is an optional extra so that "
        "you can pick the build: install it with `pip install "
        '"tfconstrain[tensorflow]"` (regular, GPU-capable wheel) or `pip '
        'install "tfconstrain[cpu]"` (CPU-only wheel).'
    ) from _error

import keras as _keras  # noqa: E402

if _keras.backend.backend() != "tensorflow":
    raise _backend_error(_keras.backend.backend())


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(_keras.__version__) < (3, 10):
    raise ImportError(
        f"tfconstrain requires keras >= 3.10 (found {_keras.__version__}); "
        "earlier 3.x versions produce NaN metrics under tf.distribute. "
        "Upgrade with `pip install -U keras`."
    )

from tfconstrain import constraints  # noqa: E402
from tfconstrain import datasets  # noqa: E402
from tfconstrain import layers  # noqa: E402
from tfconstrain import optimizers  # noqa: E402
from tfconstrain import plot  # noqa: E402
from tfconstrain import safeguards  # noqa: E402
from tfconstrain.batch import Batch  # noqa: E402
from tfconstrain.callbacks import MultiplierCallback  # noqa: E402
from tfconstrain.constraint import Constraint  # noqa: E402
from tfconstrain.constraint import FunctionConstraint  # noqa: E402
from tfconstrain.feasible import BestFeasibleWeights  # noqa: E402
from tfconstrain.feasible import FeasibleEarlyStopping  # noqa: E402
from tfconstrain.feasible import FeasibleModelCheckpoint  # noqa: E402
from tfconstrain.formulations import AugmentedLagrangian  # noqa: E402
from tfconstrain.formulations import Formulation  # noqa: E402
from tfconstrain.formulations import Lagrangian  # noqa: E402
from tfconstrain.formulations import Penalty  # noqa: E402
from tfconstrain.formulations import QuadraticPenalty  # noqa: E402
from tfconstrain.model import ConstrainedModel  # noqa: E402
from tfconstrain.model import ConstrainedSequential  # noqa: E402
from tfconstrain.report import ConstraintReport  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AugmentedLagrangian",
    "BestFeasibleWeights",
    "Batch",
    "ConstrainedModel",
    "ConstrainedSequential",
    "ConstraintReport",
    "Constraint",
    "FeasibleEarlyStopping",
    "FeasibleModelCheckpoint",
    "Formulation",
    "FunctionConstraint",
    "Lagrangian",
    "MultiplierCallback",
    "Penalty",
    "QuadraticPenalty",
    "constraints",
    "datasets",
    "layers",
    "optimizers",
    "plot",
    "safeguards",
]
