"""One worker of the loopback multi-worker test (run by `test_multi_worker.py`).

Run as a script, in a fresh process: `MultiWorkerMirroredStrategy` must be
created before any TensorFlow op. With `TF_CONFIG` in the environment the
process is one worker of the cluster it describes; without it, it is the
one-process reference (default strategy, same global batches).

    python multi_worker_worker.py OUT_DIR [--patch] [--canary]

It trains the same small constrained model three times and writes
`OUT_DIR/result_<task>.json`:

- `uninterrupted`: `fit` with `TensorBoard`, `ModelCheckpoint` and
  `BackupAndRestore` writing under `OUT_DIR/chief`, then `evaluate` and
  `constraint_report`;
- `resumed` (workers only): `fit` interrupted after epoch 1, then a fresh
  model (initialized from another seed) resuming through `BackupAndRestore`.

Every `save`/`save_weights` call is recorded with its path, so the test can
check that a non-chief worker writes nothing under `OUT_DIR/chief`.

With `--canary` (workers only) it also records whether plain Keras' `fit`
still fails under multi-worker MWMS (keras#20585): once without any
workaround, once with only the symbolic-build workaround (which leaves the
scalar-log failure of TF#72388).

With `--patch` the workarounds are monkeypatched onto `ConstrainedModel`
from here (the prototype of `tfconstrain/_keras_compat.py`, see the section
below); without it the installed `ConstrainedModel` is used as it is.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import tensorflow as tf

MULTI_WORKER = "TF_CONFIG" in os.environ
if MULTI_WORKER:
    # First TensorFlow call of the process: collectives are configured at
    # program startup.
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
else:
    STRATEGY = tf.distribute.get_strategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfconstrain as tfc  # noqa: E402

EXAMPLES = 64
GLOBAL_BATCH = 16
EPOCHS = 3
FEATURES = 4


# ---------------------------------------------------------------------------
# Prototype of tfconstrain/_keras_compat.py: applied with --patch only, by
# `apply_patch` below. Everything down to `apply_patch` is the module's code.
# ---------------------------------------------------------------------------
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


# End of the prototype module. Not part of it: the monkeypatch, and the fix
# of `tfconstrain/report.py` (one `strategy.reduce` per statistic).
def apply_patch(cls):
    """Monkeypatches the prototype onto `cls` (a `ConstrainedModel`)."""
    train_step, test_step, fit = cls.train_step, cls.test_step, cls.fit
    keras_build = cls._maybe_symbolic_build

    def patched_train_step(self, data):
        return multi_worker_step_logs(train_step(self, data))

    def patched_test_step(self, data):
        return multi_worker_step_logs(test_step(self, data))

    def patched_fit(self, *args, callbacks=None, **kwargs):
        with chief_only_writes(callbacks, self.distribute_strategy):
            return fit(self, *args, callbacks=callbacks, **kwargs)

    def patched_build(self, iterator=None, data_batch=None):
        iterator, data_batch = local_build_batch(self, iterator, data_batch)
        return keras_build(self, iterator=iterator, data_batch=data_batch)

    cls.train_step = patched_train_step
    cls.test_step = patched_test_step
    cls.fit = patched_fit
    cls._maybe_symbolic_build = patched_build

    # `constraint_report` SUM-reduces a *list* of per-replica statistics in
    # one `strategy.reduce` call, but `Strategy.reduce` takes one value, not
    # a nest: under multi-worker MWMS the list is packed into one tensor and
    # fails. The fix (in `report._report_step`): one reduce per statistic,
    # `tf.nest.map_structure(lambda v: strategy.reduce("SUM", v, axis=None),
    # per_replica)`. Patched here by making `reduce` map over the nest.
    from tfconstrain import report

    original_report_step = report._report_step

    def patched_report_step(model, weights_without_y):
        step = original_report_step(model, weights_without_y)
        strategy = model.distribute_strategy
        if not in_multi_worker_mode(strategy):
            return step
        original_reduce = strategy.reduce

        def reduce_each(reduce_op, value, axis=None):
            return tf.nest.map_structure(
                lambda v: original_reduce(reduce_op, v, axis=axis), value
            )

        def patched_step(element):
            strategy.reduce = reduce_each
            try:
                return step(element)
            finally:
                del strategy.reduce

        return patched_step

    report._report_step = patched_report_step


# ---------------------------------------------------------------------------
# The problem.
# ---------------------------------------------------------------------------
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    group = (rng.uniform(size=EXAMPLES) < 0.5).astype("int32")
    # Labels depend on the group, so demographic parity binds.
    logits = x[:, 0] + 0.5 * x[:, 1] + 1.5 * (group - 0.5)
    y = (logits > 0).astype("float32")[:, None]
    return {"x": x, "group": group}, y


def mean_prediction(batch):
    return keras.ops.mean(batch.y_pred)


def build_model(seed):
    with STRATEGY.scope():
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((FEATURES,), name="x")
        hidden = keras.layers.Dense(6, activation="tanh")(inputs)
        outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(mean_prediction, "<=", 0.35, name="rate")
        model.add_constraint(
            tfc.constraints.DemographicParity("group", num_groups=2) <= 0.05
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.2),
            loss="binary_crossentropy",
            dual_optimizer=0.5,
        )
    return model


def state(model):
    return {
        "weights": [np.asarray(w).tolist() for w in model.trainable_weights],
        "multipliers": {
            name: np.asarray(value).tolist()
            for name, value in model.multipliers.items()
        },
    }


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    return np.asarray(value, dtype=np.float64).tolist()


class Interrupt(keras.callbacks.Callback):
    """Stops `fit` with an error at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted after epoch {epoch}")


def record_saves(log):
    """Records the path of every `save`/`save_weights` of this process."""
    for method in ("save", "save_weights"):
        original = getattr(keras.Model, method)

        def recording(self, filepath, *args, _original=original, **kwargs):
            log.append(os.path.abspath(os.fspath(filepath)))
            return _original(self, filepath, *args, **kwargs)

        setattr(keras.Model, method, recording)


def uninterrupted(out_dir, x, y):
    chief = os.path.join(out_dir, "chief")
    model = build_model(seed=1)
    history = model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[
            # Relative paths (the working directory is `out_dir`) and
            # absolute ones.
            keras.callbacks.TensorBoard(os.path.join("chief", "tensorboard")),
            keras.callbacks.ModelCheckpoint(
                os.path.join("chief", "checkpoint.weights.h5"),
                save_weights_only=True,
            ),
            keras.callbacks.BackupAndRestore(
                os.path.join(chief, "backup"), delete_checkpoint=False
            ),
            tfc.MultiplierCallback(log_dir=os.path.join(chief, "multipliers")),
        ],
        validation_data=(x, y),
    )
    evaluation = model.evaluate(
        x, y, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True
    )
    report = model.constraint_report((x, y), batch_size=GLOBAL_BATCH)
    return {
        **state(model),
        "history": plain(history.history),
        "evaluate": plain(evaluation),
        "report": {
            name: {
                "value": plain(entry["value"]),
                "multiplier": plain(entry["multiplier"]),
            }
            for name, entry in report.items()
        },
    }


def resumed(out_dir, x, y):
    backup = os.path.join(out_dir, "chief", "resume_backup")
    first = build_model(seed=1)
    fit_kwargs = dict(
        batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    try:
        first.fit(
            x,
            y,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt(1)],
            **fit_kwargs,
        )
        raise AssertionError("the interruption did not happen")
    except KeyboardInterrupt:
        pass
    # Another seed: only the restored backup can make it match.
    second = build_model(seed=2)
    epochs_run = []
    second.fit(
        x,
        y,
        callbacks=[
            keras.callbacks.BackupAndRestore(backup),
            keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch)
            ),
        ],
        **fit_kwargs,
    )
    return {**state(second), "epochs_run": epochs_run}


def canary(x, y):
    """Whether plain Keras' `fit` still fails under multi-worker MWMS."""
    outcome = {}

    def plain_model():
        with STRATEGY.scope():
            inputs = keras.Input((FEATURES,), name="x")
            outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
            model = keras.Model(inputs, outputs)
            model.compile(optimizer="sgd", loss="binary_crossentropy")
        return model

    class BuildOnlyFix(MultiWorkerCompatMixin, keras.Model):
        pass

    def build_only_fixed_model():
        with STRATEGY.scope():
            inputs = keras.Input((FEATURES,), name="x")
            outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
            model = BuildOnlyFix(inputs, outputs)
            model.compile(optimizer="sgd", loss="binary_crossentropy")
        return model

    for name, make in (
        ("symbolic_build", plain_model),
        ("scalar_logs", build_only_fixed_model),
    ):
        try:
            make().fit(x["x"], y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
            outcome[name] = None
        except Exception as error:  # noqa: BLE001 - recorded for the test
            outcome[name] = f"{type(error).__name__}: {str(error)[:200]}"
    return outcome


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--patch", action="store_true")
    parser.add_argument("--canary", action="store_true")
    args = parser.parse_args()
    if args.patch:
        apply_patch(tfc.ConstrainedModel)
    if MULTI_WORKER:
        resolver = STRATEGY.cluster_resolver
        task = f"{resolver.task_type}{resolver.task_id}"
    else:
        task = "reference"
    saves = []
    record_saves(saves)
    args.out_dir = os.path.abspath(args.out_dir)
    os.chdir(args.out_dir)
    x, y = data()
    result = {
        "task": task,
        "pid": os.getpid(),
        "is_chief": bool(STRATEGY.extended.should_checkpoint),
        "replicas": STRATEGY.num_replicas_in_sync,
        "keras": keras.__version__,
        "seconds": {},
    }
    phases = [("uninterrupted", uninterrupted)]
    if MULTI_WORKER:
        phases.append(("resumed", resumed))
        if args.canary:
            phases.append(("canary", lambda out_dir, x, y: canary(x, y)))
    for name, phase in phases:
        start = time.perf_counter()
        result[name] = phase(args.out_dir, x, y)
        result["seconds"][name] = time.perf_counter() - start
    result["saves"] = saves
    path = os.path.join(args.out_dir, f"result_{task}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
