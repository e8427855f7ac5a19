"""Exact resumption from a mid-epoch `keras.callbacks.BackupAndRestore`.

With `save_freq=n`, Keras saves after batch `b` and, when the run is
interrupted, restarts that epoch from its first batch with the saved
weights: batches `0..b` would be trained on twice. `ConstrainedModel.fit`
instead consumes them without a step (a counter in the train step), so the
run continues exactly where the backup was taken — given the same data
order (no shuffling, or a seeded one).
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import tensorflow as tf

from tfconstrain import _keras_compat


def batches_done_in_backup(callbacks) -> int:
    """Batches of the interrupted epoch already in a BackupAndRestore backup.

    Keras' metadata holds the epoch and the index of the last batch at which
    it saved (with `save_freq=n`); `0` when there is nothing to skip.
    """
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    for callback in callbacks or ():
        if not isinstance(callback, keras.callbacks.BackupAndRestore):
            continue
        if callback.save_freq == "epoch":
            return 0
        path = _keras_compat.backup_metadata_path(callback)
        if not os.path.exists(path):
            return 0
        with open(path) as file:
            metadata = json.load(file)
        return int(metadata.get("batch", -1)) + 1
    return 0


@contextlib.contextmanager
def skipping_done_batches(model, callbacks):
    """Within the block, `model.skip_counter()` counts batches to skip.

    Yields:
        The counter variable (`None` when there is nothing to skip).
    """
    skip = batches_done_in_backup(callbacks)
    if not skip:
        yield None
        return
    with model.distribute_strategy.scope():
        counter = tf.Variable(skip, dtype=tf.int64, trainable=False)
    model.__dict__["_tfc_resume_skip"] = counter
    model.train_function = None
    try:
        yield counter
    finally:
        del model.__dict__["_tfc_resume_skip"]
        model.train_function = None


def pending_skips(model):
    """The counter of batches still to skip, or `None`."""
    return model.__dict__.get("_tfc_resume_skip")
