"""A constrained model's configuration: saving, loading and cloning.

- `compile_config` / `compile_from_config`: Keras' compile config plus the
  formulation, the dual optimizer (as given), the update order and the
  non-finite policy;
- `model_config` / `model_from_config`: Keras' model config plus the side
  information and the constraints that were added with `add_constraint`
  (those that layers declare come back with the layers);
- `clone`: what `keras.models.clone_model` returns for a constrained model.
"""

from __future__ import annotations

import keras
import numpy as np

from tfconstrain import _keras_compat


def compile_config(state, config: dict | None) -> dict | None:
    """`config` (Keras' compile config) with the constrained arguments."""
    if not config:
        return config
    argument = state.dual_optimizer_argument
    if argument is not None and not isinstance(argument, (int, float)):
        argument = keras.saving.serialize_keras_object(argument)
    config["formulation"] = keras.saving.serialize_keras_object(
        state.formulation
    )
    config["dual_optimizer"] = argument
    config["update"] = state.update
    config["on_nonfinite"] = state.on_nonfinite
    return config


def compile_from_config(model, config: dict) -> None:
    """Compiles `model` from `compile_config`'s output."""
    config = dict(config)
    formulation = config.pop("formulation", None)
    dual_optimizer = config.pop("dual_optimizer", None)
    update = config.pop("update", "alternating")
    on_nonfinite = config.pop("on_nonfinite", "raise")
    if isinstance(formulation, dict):
        formulation = keras.saving.deserialize_keras_object(formulation)
    if isinstance(dual_optimizer, dict):
        dual_optimizer = keras.saving.deserialize_keras_object(dual_optimizer)
    config = keras.saving.deserialize_keras_object(config)
    model.compile(
        **config,
        formulation=formulation,
        dual_optimizer=dual_optimizer,
        update=update,
        on_nonfinite=on_nonfinite,
    )
    if getattr(model, "optimizer", None) is not None and model.built:
        model.optimizer.build(model.trainable_variables)


def model_config(state, config: dict) -> dict:
    """`config` (Keras' model config) with side information and the
    constraints added with `add_constraint` (and their initial
    multipliers)."""
    config["side_information"] = list(state.side_information)
    config["constraints"] = [
        {
            "constraint": keras.saving.serialize_keras_object(c),
            "multiplier_init": np.asarray(
                state.multiplier_inits[c.name]
            ).tolist(),
        }
        for c in state.constraints
        if c.name not in state.layer_constraint_names
    ]
    return config


def model_from_config(cls, config: dict, custom_objects=None):
    """The model of class `cls` (or its functional twin) from
    `model_config`'s output, its constraints added."""
    config = dict(config)
    constraints = config.pop("constraints", [])
    side_information = tuple(config.pop("side_information", ()))
    base = cls.__dict__.get("_constrained_base") or cls
    is_functional = all(
        key in config
        for key in ("name", "layers", "input_layers", "output_layers")
    )
    if is_functional and not issubclass(base, keras.Sequential):
        twin = _keras_compat.functional_twin(base)
        model = keras.Model.from_config.__func__(
            twin, config, custom_objects=custom_objects
        )
    elif issubclass(base, keras.Sequential):
        model = keras.Sequential.from_config.__func__(
            base, config, custom_objects=custom_objects
        )
    else:
        model = base(**config)
    model._tfc.side_information = model._check_side_information(
        side_information
    )
    for entry in constraints:
        constraint = keras.saving.deserialize_keras_object(
            entry["constraint"], custom_objects=custom_objects
        )
        model.add_constraint(
            constraint, multiplier_init=entry.get("multiplier_init", 0.0)
        )
    return model


def clone(model, keras_clone_model, *args, **kwargs):
    """What `keras.models.clone_model(model, ...)` returns for a
    constrained model: Keras' clone (new layers, fresh weights) with the
    model's constraints (fresh multipliers at their initial values), side
    information and compile configuration.

    Args:
        model: The `ConstrainedModel`.
        keras_clone_model: Keras' own `clone_model`.
        *args, **kwargs: Its other arguments (`input_tensors`,
            `clone_function`, ...).
    """
    from tfconstrain.model import ConstrainedModel

    state = model._tfc
    if isinstance(model, keras.Sequential):
        # Keras clones a Sequential as a plain one: clone a plain view of
        # the layers, then rebuild the constrained class around it.
        view = keras.Sequential(model.layers, name=model.name)
        if model.built:
            view.build(model.inputs[0].shape)
        plain = keras_clone_model(view, *args, **kwargs)
        layers = list(plain.layers)
        if plain.built:
            source = plain.inputs[0]
            layers.insert(
                0, keras.Input(batch_shape=source.shape, dtype=source.dtype)
            )
        copy = type(model)(layers, name=model.name)
        if model.compiled:
            copy.compile_from_config(model.get_compile_config())
    else:
        copy = keras_clone_model(model, *args, **kwargs)
        if not isinstance(copy, ConstrainedModel):
            return copy
    copy._tfc.side_information = state.side_information
    for constraint in state.constraints:
        if constraint.name in state.layer_constraint_names:
            continue
        if constraint.name not in copy._tfc.multipliers:
            copy.add_constraint(
                constraint.copy(),
                multiplier_init=state.multiplier_inits[constraint.name],
            )
    return copy
