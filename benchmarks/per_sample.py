"""Step time with 10⁵ per-sample multipliers vs the same model unconstrained.

Feasible learning (`loss_i <= ε` for every example `i`) on 100,000
synthetic examples: the constrained model keeps one multiplier per example,
and each step reads and moves only those of the batch's examples. Two
device set-ups, all four candidates interleaved in one process:

- one device (the default strategy);
- two replicas: `tf.distribute.MirroredStrategy` over two logical CPU
  devices (configured at start-up, before TensorFlow initializes), global
  batch 256 split 128 + 128. The per-sample multipliers are one variable
  mirrored on both replicas; each replica's rows are gathered by id and the
  updates all-reduced.

Printed: milliseconds per step and the median of the per-round ratios of
the per-sample model to the plain one with the same devices. Goal: ratio
<= 1.2. Both replicas share this machine's cores (one thread per op by
default, see `common.py`): the two-replica figures measure the overhead of
the distributed step, not a speed-up.

Writes `benchmarks/results/per_sample.json` (`per_sample_quick.json` with
`--quick`).

Run: `.venv/bin/python benchmarks/per_sample.py [--quick] [--samples N]`.
"""

from __future__ import annotations

import argparse

import tensorflow as tf

# Two logical CPUs for the MirroredStrategy case; only possible before
# TensorFlow initializes its runtime, hence here, before anything runs.
_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU,
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import Candidate  # noqa: E402
from common import calibrate_steps  # noqa: E402
from common import compare  # noqa: E402
from common import machine_info  # noqa: E402
from common import print_summary  # noqa: E402
from common import summarize  # noqa: E402
from common import write_json  # noqa: E402

import tfconstrain as tfc  # noqa: E402

GOAL = 1.2
FEATURES = 32


def per_example_loss(batch):
    return keras.losses.binary_crossentropy(batch.y, batch.y_pred)


def build(num_samples: int | None, strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((FEATURES,), name="features")
        hidden = keras.layers.Dense(128, activation="relu")(inputs)
        hidden = keras.layers.Dense(128, activation="relu")(hidden)
        outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
        if num_samples is None:
            model = keras.Model(inputs, outputs)
            model.compile(optimizer="adam", loss="binary_crossentropy")
            return model
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(
            tfc.constraints.PerSampleConstraint(
                per_example_loss,
                num_samples=num_samples,
                kind="<=",
                bound=0.1,
                name="each",
            )
        )
        model.compile(
            optimizer="adam", loss="binary_crossentropy", dual_optimizer=0.01
        )
        return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--quick", action="store_true", help="CI: < 1 min")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 3, 0.15

    rng = np.random.default_rng(0)
    features = rng.normal(size=(args.samples, FEATURES)).astype("float32")
    labels = (features[:, :1] > 0).astype("float32")
    ids = np.arange(args.samples, dtype="int32")

    def dataset(with_ids: bool):
        x = {"features": features, "sample_id": ids} if with_ids else features

        def make(steps: int) -> tf.data.Dataset:
            # Distinct examples in every batch (ids are not repeated within
            # an epoch); the input work is the same for all candidates.
            return (
                tf.data.Dataset.from_tensor_slices((x, labels))
                .repeat()
                .batch(args.batch, drop_remainder=True)
                .take(steps)
            )

        return make

    single = tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    candidates = {
        "plain, 1 device": Candidate(build(None, single), dataset(False)),
        "per-sample, 1 device": Candidate(
            build(args.samples, single), dataset(True)
        ),
        "plain, 2 replicas": Candidate(build(None, mirrored), dataset(False)),
        "per-sample, 2 replicas": Candidate(
            build(args.samples, mirrored), dataset(True)
        ),
    }
    info = machine_info()
    print(
        f"{info['date']}  {info['cpu']}, {info['cores']} cores, load "
        f"{info['load_average_1_5_15']}, TF threads "
        f"{info['tensorflow_threads']}; {args.samples} examples, batch "
        f"{args.batch}"
    )
    steps = calibrate_steps(
        candidates["plain, 1 device"], args.seconds, 1, minimum=16
    )
    samples = compare(candidates, steps, args.rounds)
    results = {}
    for devices in ("1 device", "2 replicas"):
        plain, constrained = f"plain, {devices}", f"per-sample, {devices}"
        summary = summarize(
            {plain: samples[plain], constrained: samples[constrained]}, plain
        )
        print(
            f"\n{devices} ({steps} steps per measurement, {args.rounds} rounds)"
        )
        print_summary(summary, plain, {constrained: GOAL})
        results[devices] = summary
    after = machine_info()["load_average_1_5_15"]
    print(f"load average after: {after}")
    path = write_json(
        "per_sample_quick" if args.quick else "per_sample",
        {
            "benchmark": "per_sample",
            "machine": info,
            "load_average_after": after,
            "arguments": vars(args),
            "steps": steps,
            "goal": GOAL,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
