"""Small optimisation problems expressed as Keras models whose weights are x.

`min f(x) s.t. g(x)`: a `Point` layer holds x; the model maps a dummy input to
a dummy output, and the loss closes over the layer's variable, so `model.fit`
on a dataset that repeats one dummy batch performs full-batch steps.
"""

import keras
import numpy as np
import tensorflow as tf

import tfconstrain as tfc


class Point(keras.layers.Layer):
    """A layer whose only weight is the decision vector x."""

    def __init__(self, initial, constraint=None, **kwargs):
        super().__init__(**kwargs)
        initial = np.asarray(initial, dtype="float32")
        self.x = self.add_weight(
            shape=initial.shape,
            initializer=keras.initializers.Constant(initial),
            constraint=constraint,
            name="x",
        )

    def call(self, inputs):
        # The output does not depend on x: the objective is in the loss.
        return tf.zeros_like(inputs)


def point_model(initial, constraint=None):
    """Returns `(model, point_layer)` for a decision vector starting at x0."""
    inputs = keras.Input((1,))
    point = Point(initial, constraint=constraint)
    model = tfc.ConstrainedModel(inputs, point(inputs))
    return model, point


def objective(fn):
    """A Keras loss computing `fn()` (the objective), ignoring the data."""

    def loss(y_true, y_pred):
        return fn() + 0.0 * tf.reduce_mean(y_pred)

    return loss


def run_steps(model, steps, batch=1):
    """Runs `steps` full-batch training steps on one dummy batch."""
    dummy = np.zeros((batch, 1), "float32")
    dataset = tf.data.Dataset.from_tensors((dummy, dummy)).repeat(steps)
    return model.fit(dataset, epochs=1, verbose=0, shuffle=False)


@keras.saving.register_keras_serializable(package="tfconstrain_tests")
def mean_prediction(batch):
    """A registered constraint function (restorable by `load_model`)."""
    return keras.ops.mean(batch.y_pred)


def random_scores(seed, n, groups):
    """Random probabilities, 0/1 labels, group ids and sample weights."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(size=(n, 1)).astype("float32")
    labels = rng.integers(0, 2, size=(n, 1)).astype("float32")
    group = rng.integers(0, groups, size=n).astype("int32")
    weights = rng.uniform(0.2, 3.0, size=n).astype("float32")
    return probabilities, labels, group, weights


def identity_model(constraints, strategy=None):
    """A model whose prediction is its input "score": predictions are data."""
    scope = strategy.scope() if strategy else tf.init_scope()
    with scope:
        inputs = keras.Input((1,), name="score")
        outputs = keras.layers.Activation("linear")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
        for constraint in constraints:
            model.add_constraint(constraint)
        model.compile(loss="mse")
    return model


class _ConstraintKind:
    def __init__(self, is_equality):
        self.is_equality = is_equality


def built_dual_optimizer(optimizer, shapes, equality=None):
    """Builds a dual optimizer on plain variables, outside any model.

    `shapes`: `name -> multiplier shape`. With `equality` (a bool), the
    optimizer first receives constraints of that kind (`set_constraints`).
    Returns `(multipliers, state)`, both `name -> keras.Variable`.
    """
    if equality is not None:
        optimizer.set_constraints(
            {name: _ConstraintKind(equality) for name in shapes}
        )
    multipliers = {
        name: keras.Variable(np.zeros(shape, "float32"))
        for name, shape in shapes.items()
    }
    state = {}

    def create_state(name, shape, initial_value):
        state[name] = keras.Variable(np.full(shape, initial_value, "float32"))
        return state[name]

    optimizer.build(multipliers, create_state)
    return multipliers, state
