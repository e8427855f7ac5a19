"""Test set-up: two logical CPU devices, deterministic ops, fresh sessions.

The logical devices must be configured before TensorFlow initialises its
runtime, so this runs at import time, before any test module imports
tfconstrain.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def mirrored():
    """A MirroredStrategy over the two logical CPU devices.

    One strategy for the whole session: strategies created one after the
    other in a process share collective group and instance keys, and a
    collective of one can then be matched with another's (TensorFlow aborts
    every later collective: "Shape mismatch in the collective instance").
    """
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
