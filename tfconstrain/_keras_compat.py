"""Workarounds for Keras behaviour that `ConstrainedModel` depends on.

Every private Keras name used by tfconstrain is used here, and only here.
Each workaround names its upstream issue; `tests/test_multi_worker.py::
test_plain_keras_fit_works_under_multi_worker` XPASSes the day Keras no
longer needs them.

Multi-worker `MultiWorkerMirroredStrategy` (keras-team/keras#20585,
tensorflow/tensorflow#72388), both seen on Keras 3.15.1 and in the code of
3.10:

1. `_maybe_symbolic_build` passes a tuple of per-replica values to
   `Strategy.reduce` -> `MultiWorkerCompatMixin`, `local_build_batch`.
2. `reduce_per_replica` reduces step logs with `axis=0` -> the steps return
   `multi_worker_step_logs(logs)`.

And Keras 3 callbacks have no chief logic -> `chief_only_writes`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import keras
import tensorflow as tf


def in_multi_worker_mode(strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over > 1 worker.

    Keras' condition for its multi-worker code paths (it asks the private
    `strategy.extended._in_multi_worker_mode()`), from public attributes:
    the replicas in sync outnumber this worker's own devices.
    """
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def multi_worker_step_logs(logs: dict) -> dict:
    """Step logs that Keras can reduce across workers (TF#72388).

    Keras reduces every value returned by `train_step`/`test_step`; under
    multi-worker MWMS with `strategy.reduce("MEAN", value, axis=0)`, which
    rejects scalars ("Invalid reduction dimension 0 for input with 0
    dimensions", keras#20585). A value of shape `(1,)` reduces along that
    axis to the mean over replicas, a scalar: the logs Keras then sees are
    those of any other strategy (a plain mean over replicas). Under any
    other strategy the logs are returned unchanged.

    Call it on the dict a `train_step`/`test_step` returns (in replica
    context).
    """
    if not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return tf.nest.map_structure(lambda v: tf.reshape(v, (1,)), logs)


def local_build_batch(model, iterator, data_batch):
    """`(iterator, data_batch)` for Keras' `_maybe_symbolic_build`.

    Under multi-worker MWMS, returns `(None, batch)` with `batch` this
    worker's first replica batch of the epoch iterator (same shapes and
    dtypes as every replica's), instead of letting Keras MEAN-reduce the
    distributed batch (see `MultiWorkerCompatMixin`). Otherwise returns its
    arguments unchanged.
    """
    strategy = model._distribute_strategy
    if iterator is None or not in_multi_worker_mode(strategy):
        return iterator, data_batch
    # `(step, iterator)` in Keras 3.10, `(begin, end, iterator)` later.
    for *_, distributed_iterator in iterator:
        batch = next(distributed_iterator)
        break
    batch = tf.nest.map_structure(
        lambda v: (
            strategy.experimental_local_results(v)[0]
            if isinstance(v, tf.distribute.DistributedValues)
            else v
        ),
        batch,
    )
    return None, batch


class MultiWorkerCompatMixin:
    """Keras' symbolic build, from a local batch under multi-worker MWMS.

    `fit` and `evaluate` call `_maybe_symbolic_build` for every model
    created in a strategy scope (built or not). It MEAN-reduces the first
    distributed batch across replicas only to read its shapes and dtypes,
    passing a tuple of per-replica values to `Strategy.reduce`, which takes
    one value: under multi-worker MWMS this fails with "Attempt to convert
    a value (PerReplica...) to a Tensor" (keras#20585; Keras 3.10 to at
    least 3.15.1). This override builds from this worker's first batch.
    Remove it when `tests/test_multi_worker.py::
    test_plain_keras_fit_works_under_multi_worker` passes.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        iterator, data_batch = local_build_batch(self, iterator, data_batch)
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )


def _output_paths():
    """Callbacks that write files: `(class, path attribute, is a file)`."""
    from tfconstrain.callbacks import MultiplierCallback

    return (
        (keras.callbacks.TensorBoard, "log_dir", False),
        (keras.callbacks.ModelCheckpoint, "filepath", True),
        (keras.callbacks.BackupAndRestore, "backup_dir", False),
        (keras.callbacks.CSVLogger, "filename", True),
        (MultiplierCallback, "log_dir", False),
    )


@contextlib.contextmanager
def chief_only_writes(callbacks, strategy):
    """On a non-chief worker, callbacks write to a temporary directory.

    Keras 3 callbacks have no multi-worker logic: under MWMS every worker
    would write the same TensorBoard files and checkpoints. Every worker
    still runs every callback, but on a worker that is not the chief
    (`strategy.extended.should_checkpoint` is `False`) each file-writing
    callback is pointed, for the duration of the `with` block, at a private
    temporary directory that is deleted afterwards: the file of a
    `ModelCheckpoint` or `CSVLogger`; the directory of the others, with
    every string attribute under it (Keras' `BackupAndRestore` derives four
    paths from `backup_dir`). A `BackupAndRestore` directory is first
    copied there, so that every worker restores the chief's backup. No-op
    except on the non-chief workers of a multi-worker MWMS.

    Args:
        callbacks: What `fit` received: a list (possibly nested), a
            `keras.callbacks.CallbackList`, or `None`.
        strategy: The model's `tf.distribute.Strategy`.
    """
    if (
        not in_multi_worker_mode(strategy)
        or strategy.extended.should_checkpoint
    ):
        yield
        return
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    temp_dir = tempfile.mkdtemp(prefix="tfconstrain_worker_")
    saved = []
    try:
        for index, callback in enumerate(keras.tree.flatten(callbacks or [])):
            for cls, attribute, is_file in _output_paths():
                path = getattr(callback, attribute, None)
                if not isinstance(callback, cls) or not path:
                    continue
                path = os.fspath(path)
                private = os.path.join(temp_dir, str(index))
                if is_file:
                    redirected = {
                        attribute: (
                            path,
                            os.path.join(private, os.path.basename(path)),
                        )
                    }
                else:
                    if isinstance(callback, keras.callbacks.BackupAndRestore):
                        _copy_tree(path, private)
                    redirected = {
                        name: (value, private + value[len(path) :])
                        for name, value in vars(callback).items()
                        if isinstance(value, str)
                        and (value == path or value.startswith(path + os.sep))
                    }
                for name, (original, new) in redirected.items():
                    saved.append((callback, name, original))
                    setattr(callback, name, new)
                break
        yield
    finally:
        for callback, name, value in reversed(saved):
            setattr(callback, name, value)
        tf.io.gfile.rmtree(temp_dir)


def _copy_tree(source, destination):
    """Copies a directory (local or `tf.io.gfile` path) if it exists."""
    if not tf.io.gfile.isdir(source):
        return
    tf.io.gfile.makedirs(destination)
    for name in tf.io.gfile.listdir(source):
        name = name.rstrip("/")
        path = os.path.join(source, name)
        if tf.io.gfile.isdir(path):
            _copy_tree(path, os.path.join(destination, name))
        else:
            tf.io.gfile.copy(path, os.path.join(destination, name))


# ---------------------------------------------------------------------------
# Other private Keras touches, each pinned by tests/test_keras_compat.py.


def functional_class() -> type:
    """Keras' `Functional` class (private: `keras.src.models.functional`).

    `ConstrainedModel` builds a per-class "functional twin" subclass of it
    instead of letting Keras rewrite the class's bases in place.
    """
    try:
        from keras.src.models.functional import Functional
    except ImportError as error:  # pragma: no cover - version dependent
        raise ImportError(
            "tfconstrain needs `keras.src.models.functional.Functional`, "
            f"which Keras {keras.__version__} no longer has. Please report "
            "this with your Keras version."
        ) from error
    return Functional


def input_structure(model):
    """The nest of a functional model's inputs (private `_inputs_struct`)."""
    return getattr(model, "_inputs_struct", None)


def backup_metadata_path(callback) -> str:
    """Path of `BackupAndRestore`'s training metadata file (private)."""
    return getattr(
        callback,
        "_training_metadata_path",
        os.path.join(callback.backup_dir, "training_metadata.json"),
    )
