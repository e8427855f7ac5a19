"""`ConstraintDiagnostics`: oscillation, empty groups, never-active constraints.

Each diagnostic fires, once and naming the constraint, on a run built for it,
and stays silent on a healthy run.
"""

import contextlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import objective
from problems import point_model

import tfconstrain as tfc
from tfconstrain.safeguards import ConstraintDiagnostics
from tfconstrain.safeguards import InactiveConstraintWarning


def _full_batch_fit(model, epochs, callbacks):
    """One full-batch step per epoch."""
    dummy = np.zeros((1, 1), "float32")
    return model.fit(
        tf.data.Dataset.from_tensors((dummy, dummy)),
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )


def _capped_point(objective_fn, bound, primal_lr, dual_lr, formulation=None):
    """min f(x) s.t. x <= bound, from x0 = 0."""
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda batch: x[0], "<=", bound, name="cap")
    model.compile(
        optimizer=keras.optimizers.SGD(primal_lr),
        loss=objective(lambda: objective_fn(x[0])),
        dual_optimizer=None if formulation else dual_lr,
        formulation=formulation,
    )
    return model


@contextlib.contextmanager
def no_diagnostics():
    """Turns every diagnostic (messages "Constraint '...") into an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Constraint '")
        yield


def _diagnostics_warnings(record):
    return [
        w
        for w in record
        if issubclass(w.category, (UserWarning, InactiveConstraintWarning))
        and "Constraint '" in str(w.message)
    ]


def test_oscillation_around_the_bound_warns_once():
    # min -x s.t. x <= 1, alternating steps with η = 1, ρ = 3: the linear
    # map of (x - 1, λ - 1) has determinant 1 and trace -1, a rotation by
    # 120°: x cycles 1, 2, 0, ... and never settles.
    model = _capped_point(lambda x: -x, 1.0, primal_lr=1.0, dual_lr=3.0)
    diagnostics = ConstraintDiagnostics()
    with pytest.warns(UserWarning, match="'cap' oscillates") as record:
        history = _full_batch_fit(model, 40, [diagnostics])
    assert history.history["cap"][-3:] == pytest.approx([1.0, 2.0, 0.0])
    assert len(_diagnostics_warnings(record)) == 1
    assert diagnostics.warned["oscillation"] == {"cap"}
    message = str(_diagnostics_warnings(record)[0].message)
    assert "dual learning rate" in message
    assert "FeasibleModelCheckpoint" in message


def test_damped_oscillation_does_not_warn():
    # min (x - 2)² s.t. x <= 1 with small steps: x overshoots the bound, then
    # settles at x* = 1 (λ* = 2) with shrinking swings.
    model = _capped_point(
        lambda x: (x - 2.0) ** 2, 1.0, primal_lr=0.1, dual_lr=0.5
    )
    with no_diagnostics():
        history = _full_batch_fit(model, 150, [ConstraintDiagnostics()])
    signs = np.sign(np.array(history.history["cap"]) - 1.0 + 1e-9)
    assert np.sum(signs[1:] != signs[:-1]) >= 2  # it did cross the bound
    assert history.history["cap"][-1] == pytest.approx(1.0, abs=1e-3)


def test_never_active_constraint_is_reported_at_the_end():
    # min (x - 2)² s.t. x <= 10: the optimum x = 2 has slack 8.
    model = _capped_point(
        lambda x: (x - 2.0) ** 2, 10.0, primal_lr=0.1, dual_lr=0.5
    )
    diagnostics = ConstraintDiagnostics()
    with pytest.warns(InactiveConstraintWarning, match="'cap' never bound"):
        _full_batch_fit(model, 20, [diagnostics])
    assert diagnostics.warned["inactive"] == {"cap"}
    assert not issubclass(InactiveConstraintWarning, UserWarning)


@pytest.mark.parametrize(
    "bound, formulation",
    [
        (2.05, None),  # slack 0.05 < 0.1: close to binding
        (10.0, tfc.Penalty(1.0)),  # multipliers never move by design
    ],
)
def test_inactive_check_skips_small_slack_and_frozen_multipliers(
    bound, formulation
):
    model = _capped_point(
        lambda x: (x - 2.0) ** 2, bound, 0.1, 0.5, formulation=formulation
    )
    with no_diagnostics():
        _full_batch_fit(model, 20, [ConstraintDiagnostics()])


def _group_model(constraint):
    inputs = keras.Input((3,), name="features")
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(constraint)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model


def _group_data(n, groups, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (rng.uniform(size=(n, 1)) < 0.5).astype("float32")
    return x, y, np.asarray(groups, "int32")


def test_a_group_without_examples_in_an_epoch_warns_naming_it():
    # Three groups declared, ids only 0 and 1 (say, a coding mistake).
    x, y, g = _group_data(60, np.arange(60) % 2)
    model = _group_model(
        tfc.constraints.DemographicParity("g", num_groups=3) <= 0.1
    )
    diagnostics = ConstraintDiagnostics()
    with pytest.warns(UserWarning, match=r"'demographic_parity'.*g=2") as rec:
        model.fit(
            {"features": x, "g": g},
            y,
            batch_size=20,
            epochs=3,
            verbose=0,
            callbacks=[diagnostics],
        )
    assert len([w for w in rec if "no data for" in str(w.message)]) == 1
    assert "training data" in str(rec[0].message)


def test_a_group_missing_from_the_validation_data_warns():
    x, y, g = _group_data(60, np.arange(60) % 2)
    model = _group_model(
        tfc.constraints.Rate("selection_rate", group_key="g", name="selection")
        <= 0.9
    )
    validation = ({"features": x, "g": np.zeros(60, "int32")}, y)
    with pytest.warns(UserWarning, match=r"'selection'.*g=1.*validation"):
        model.fit(
            {"features": x, "g": g},
            y,
            batch_size=20,
            epochs=2,
            verbose=0,
            validation_data=validation,
            callbacks=[ConstraintDiagnostics()],
        )


def test_a_rate_without_its_conditioning_class_warns():
    # Recall needs positives; this data has none.
    x, y, _ = _group_data(40, np.zeros(40))
    model = _group_model(tfc.constraints.Recall() >= 0.5)
    with pytest.warns(UserWarning, match="'recall'.*the whole data"):
        model.fit(
            x,
            np.zeros_like(y),
            batch_size=20,
            epochs=1,
            verbose=0,
            callbacks=[ConstraintDiagnostics()],
        )


def test_groups_that_are_all_present_do_not_warn():
    x, y, g = _group_data(90, np.arange(90) % 3)
    model = _group_model(
        tfc.constraints.DemographicParity("g", num_groups=3) <= 0.5
    )
    with no_diagnostics():
        model.fit(
            {"features": x, "g": g},
            y,
            batch_size=30,
            epochs=2,
            verbose=0,
            validation_data=({"features": x, "g": g}, y),
            callbacks=[ConstraintDiagnostics()],
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 1},
        {"min_sign_changes": 0},
        {"min_relative_decrease": 1.0},
        {"min_amplitude": -1.0},
        {"min_epochs": 0},
        {"min_slack": float("nan")},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ConstraintDiagnostics(**kwargs)
