"""Train 2 epochs, save, load in a fresh process, train 2 more == 4 epochs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, {here!r})
    import keras, numpy as np
    import tfconstrain as tfc
    import problems  # registers mean_prediction

    KIND, MODE, PATH, OUT = sys.argv[1:5]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    COMPILES = {{
        "lagrangian": dict(dual_optimizer=0.5),
        "augmented": dict(formulation=tfc.AugmentedLagrangian(
            penalty=1.0, penalty_growth=1.5)),
        "nupi": dict(dual_optimizer=tfc.optimizers.NuPI(0.5, kp=1.0, nu=0.5)),
    }}

    def build():
        keras.utils.set_random_seed(2)
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(problems.mean_prediction, "<=", 0.2, name="rate")
        model.compile(optimizer=keras.optimizers.Adam(0.05),
                      loss="binary_crossentropy", **COMPILES[KIND])
        return model

    def train(model, epochs):
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)

    if MODE == "first":
        model = build(); train(model, 2); model.save(PATH)
    elif MODE == "second":
        model = keras.models.load_model(PATH); train(model, 2)
    else:
        model = build(); train(model, 4)
    state = [keras.ops.convert_to_numpy(v).tolist() for v in model.weights]
    state += [keras.ops.convert_to_numpy(v).tolist()
              for v in model.optimizer.variables]
    json.dump(state, open(OUT, "w"))
    """
).format(here=HERE)


def run(tmp_path, *arguments):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    environment = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, str(script), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("kind", ["lagrangian", "augmented", "nupi"])
def test_save_load_in_fresh_process_continues_exactly(kind, tmp_path):
    path = str(tmp_path / "model.keras")
    run(tmp_path, kind, "first", path, str(tmp_path / "a.json"))
    run(tmp_path, kind, "second", path, str(tmp_path / "resumed.json"))
    run(tmp_path, kind, "reference", path, str(tmp_path / "reference.json"))
    resumed = json.load(open(tmp_path / "resumed.json"))
    reference = json.load(open(tmp_path / "reference.json"))
    assert len(resumed) == len(reference)
    for a, b in zip(resumed, reference):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
