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


class KerasCompatMixin:
    """The Keras hooks `ConstrainedModel` overrides, each for one reason.

    - `_maybe_symbolic_build` (multi-worker MWMS, keras#20585): `fit` and
      `evaluate` call it for every model created in a strategy scope. It
      MEAN-reduces the first distributed batch across replicas only to read
      its shapes and dtypes, passing a tuple of per-replica values to
      `Strategy.reduce`, which takes one value: under multi-worker MWMS this
      fails with "Attempt to convert a value (PerReplica...) to a Tensor"
      (Keras 3.10 to at least 3.15.1). This override builds from this
      worker's first batch. Remove it when `tests/test_multi_worker.py::
      test_plain_keras_fit_works_under_multi_worker` passes.
    - `_get_metrics_result_or_logs`: Keras reads the metrics again
      (cross-replica, exact) for epoch logs only when a step returned
      exactly the metric keys. Constrained steps leave the constraint keys
      out of per-step logs (each costs a host conversion per batch); the
      override reads them from the metrics and lets the model complete the
      logs (`_complete_epoch_logs`, e.g. `feasible`).
    - `_trackable_children`: Keras saves multipliers and dual state through
      the model's variable list, which `tf.train.Checkpoint` does not follow
      (it follows attributes); the model names them
      (`_checkpoint_variables`).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        iterator, data_batch = local_build_batch(self, iterator, data_batch)
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def _get_metrics_result_or_logs(self, logs):
        metric_logs = self.get_metrics_result()
        if isinstance(logs, dict) and set(logs) <= set(metric_logs):
            logs = metric_logs
        return self._complete_epoch_logs(logs)

    def _complete_epoch_logs(self, logs):
        return logs

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        children.update(self._checkpoint_variables())
        return children

    def _checkpoint_variables(self) -> dict:
        return {}


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


def is_functional(model) -> bool:
    """Whether `model` is a Keras functional model."""
    return isinstance(model, functional_class())


_FUNCTIONAL_TWINS: dict[type, type] = {}


def functional_twin(cls: type) -> type:
    """A subclass of `cls` and Keras' `Functional`, made once per class.

    Keras turns a `Model` subclass called with `(inputs, outputs)` into a
    functional model by rewriting the class's bases in place, which would
    break later subclassed use of the same class. The twin keeps `cls`
    untouched; it is registered for saving under `cls`'s name.
    """
    functional = functional_class()
    if issubclass(cls, functional):
        return cls
    if cls not in _FUNCTIONAL_TWINS:
        twin = type(
            cls.__name__,
            (cls, functional),
            {"__module__": cls.__module__, "_constrained_base": cls},
        )
        registered = keras.saving.get_registered_name(cls)
        if ">" in registered:
            package, name = registered.split(">", 1)
            keras.saving.register_keras_serializable(package, name)(twin)
        _FUNCTIONAL_TWINS[cls] = twin
    return _FUNCTIONAL_TWINS[cls]


def is_functional_call(args: tuple, kwargs: dict) -> bool:
    """Whether `Model(*args, **kwargs)` builds a functional model."""
    return (
        (len(args) == 2)
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@contextlib.contextmanager
def creating_state(model):
    """Lets `model.add_weight` create variables after the model is built
    (private `_tracker`), in the model's strategy scope."""
    tracker = model._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        with model.distribute_strategy.scope():
            yield
    finally:
        if was_locked:
            tracker.lock()


def own_variables(model) -> list:
    """The variables `Layer.save_own_variables` / `load_own_variables` store,
    in their order (private `_trainable_variables + _non_trainable_variables`:
    the model's own, not its layers')."""
    return list(model._trainable_variables) + list(
        model._non_trainable_variables
    )


def untrack_variable(model, variable) -> None:
    """Removes a variable `add_weight` created (private `_untrack_variable`)."""
    model._untrack_variable(variable)


def loss_tracker(model):
    """Keras' `loss` metric of a compiled model (private `_loss_tracker`)."""
    return model._loss_tracker


def update_compiled_metrics(model, y, y_pred, sample_weight) -> None:
    """Updates the `metrics=` of `compile` only (private `_compile_metrics`;
    the public `compute_metrics` also reads every metric's result)."""
    compiled = model._compile_metrics
    if compiled is not None:
        compiled.update_state(y, y_pred, sample_weight)


def flatten_layers(model, include_self=False, recursive=True):
    """Every layer of `model`, nested ones included (private
    `_flatten_layers`)."""
    return model._flatten_layers(include_self=include_self, recursive=recursive)


def install_clone_model_hook() -> None:
    """Makes `keras.models.clone_model` keep a constrained model's constraints.

    Keras clones a functional model by calling its class with new inputs and
    outputs, and a Sequential one as a plain `keras.Sequential`: neither
    path can carry the constraints, and Keras has no hook for it. The
    public `keras.models.clone_model` is wrapped (once, at import of
    tfconstrain): a `ConstrainedModel` clones itself with Keras' function
    (`ConstrainedModel._clone_with`); any other model gets Keras' own
    result, unchanged.
    """
    import functools

    original = keras.models.clone_model
    if getattr(original, "_tfconstrain_hook", False):
        return

    @functools.wraps(original)
    def clone_model(model, *args, **kwargs):
        clone_with = getattr(model, "_clone_with", None)
        if clone_with is None:
            return original(model, *args, **kwargs)
        return clone_with(original, *args, **kwargs)

    clone_model._tfconstrain_hook = True
    keras.models.clone_model = clone_model
