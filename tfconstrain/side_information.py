"""Side information: `x` dict keys that constraints read but the model does not.

A fairness constraint needs the sensitive attribute; the network must not
see it. Users put it in the `x` dict beside the model's inputs; every step
splits it off before the forward pass and hands it to constraints as
`batch.features[key]`. Functional models treat every key that is not an
input name as side information; subclassed models declare theirs
(`side_information=`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import _keras_compat


def check_keys(model, keys) -> tuple:
    """Validates declared side-information keys against the model inputs.

    Raises:
        TypeError: if a key is not a string.
        ValueError: if a key is also a model input name.
    """
    if isinstance(keys, str):
        keys = (keys,)
    keys = tuple(keys or ())
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(
                f"`side_information` must be a tuple of strings, got {keys!r}."
            )
    inputs = input_names(model)
    clash = sorted(set(keys) & set(inputs))
    if clash:
        raise ValueError(
            f"Side-information key(s) {clash} collide with model input "
            f"name(s) {sorted(inputs)}. Rename the side-information key."
        )
    return keys


def input_names(model) -> tuple:
    """A functional model's input names (and dict keys); `()` otherwise."""
    if not _keras_compat.is_functional(model):
        return ()
    names = [t.name for t in tf.nest.flatten(model.inputs)]
    structure = _keras_compat.input_structure(model)
    if isinstance(structure, dict):
        names.extend(structure)
    return tuple(names)


def split(model, x, declared: tuple):
    """Removes side-information keys from a dict `x`.

    Args:
        model: The model (its inputs decide what is side information).
        x: The model input as given to `fit`/`evaluate`/`predict`/`__call__`.
        declared: Declared side-information keys.

    Returns:
        `(model_input, features)`: functional models with one non-dict
        input and Sequential models get the remaining tensor itself;
        subclassed models the dict without the side-information keys.

    Raises:
        ValueError: if `x` holds only side information.
    """
    if not isinstance(x, dict):
        return x, {}
    inputs = set(input_names(model))
    is_functional = _keras_compat.is_functional(model)
    side = [
        key
        for key in x
        if key in declared or (is_functional and key not in inputs)
    ]
    structure = _keras_compat.input_structure(model)
    single_input = isinstance(model, keras.Sequential) or (
        is_functional and not isinstance(structure, dict)
    )
    if not side:
        if single_input and len(x) == 1:
            return next(iter(x.values())), {}
        return x, {}
    features = {key: x[key] for key in side}
    rest = {key: value for key, value in x.items() if key not in side}
    if not rest:
        raise ValueError(
            f"The input dict has only side-information keys "
            f"{sorted(features)}; the model input is missing."
        )
    if len(rest) == 1 and single_input:
        rest = next(iter(rest.values()))
    return rest, features


def with_string_arrays_as_objects(args: tuple, kwargs: dict):
    """`fit`/`evaluate`/`predict` arguments with numpy string arrays in an
    `x` dict (and in `validation_data`'s) converted to `object` dtype.

    Keras cannot convert numpy's fixed-width string dtypes (`<U`, `S`;
    "Invalid dtype: str32"); object arrays of strings become `tf.string`
    tensors, which string group ids (`group_names=`) take.
    """

    def convert(x):
        if not isinstance(x, dict):
            return x
        return {
            key: (
                value.astype(object)
                if isinstance(value, np.ndarray) and value.dtype.kind in "US"
                else value
            )
            for key, value in x.items()
        }

    if args:
        args = (convert(args[0]), *args[1:])
    elif "x" in kwargs:
        kwargs = {**kwargs, "x": convert(kwargs["x"])}
    validation = kwargs.get("validation_data")
    if isinstance(validation, (tuple, list)) and validation:
        kwargs = {
            **kwargs,
            "validation_data": (convert(validation[0]), *validation[1:]),
        }
    return args, kwargs
