"""Test set-up: two logical CPU devices, deterministic ops, fresh sessions.

The logical devices must be configured before TensorFlow initialises its
runtime, so this runs at import time, before any test module imports
tfconstrain.

Device-dependent tests carry a marker naming what they need, and are skipped
(with the reason) where this machine's default device lacks it:

- `requires_nchw_conv`: a channels-first (NCHW) `Conv2D`. TensorFlow's CPU
  kernels support only NHWC (TensorFlow 2.21: "The Conv2D op currently only
  supports the NHWC tensor format on the CPU"); GPUs support both.
"""

import functools
import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
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


@functools.cache
def nchw_conv_unsupported() -> str | None:
    """Why a channels-first convolution cannot run here, or None if it can.

    Probes once per session: one `keras.ops.conv` on the default device with
    `data_format="channels_first"`, the op `L0Conv2D` calls. Only
    TensorFlow's own op errors count as "unsupported"; anything else is a
    real failure and propagates.
    """
    x = np.ones((1, 1, 3, 3), np.float32)
    kernel = np.ones((2, 2, 1, 1), np.float32)
    try:
        keras.ops.conv(x, kernel, data_format="channels_first")
    except tf.errors.OpError as error:
        device = tf.config.list_logical_devices()[0].name
        # Drop TensorFlow's "{{function_node ...}}" prefix.
        message = re.sub(r"\{\{.*?\}\}\s*", "", str(error.message))
        message = message.strip().splitlines()[0]
        return (
            f"channels_first (NCHW) Conv2D does not run on {device} with "
            f"TensorFlow {tf.__version__}: {type(error).__name__}: {message}"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_nchw_conv") is not None:
        reason = nchw_conv_unsupported()
        if reason is not None:
            pytest.skip(reason)
