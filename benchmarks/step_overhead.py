"""Cost of a constrained `fit` step relative to the same plain Keras step.

For each block of settings — model (`mlp`: the Adult MLP, 103 → 64 → 1, on
a batch of 256 real Adult rows; `cnn`: a small CNN on 16×16 images, batch
256), graph or XLA (`jit_compile=True`), `steps_per_execution` 1 or 32 — the
same plain `keras.Model` and `tfc.ConstrainedModel`s with

- 1, 3 and 10 callable constraints (`mean(ŷᵏ) <= b`),
- the built-in rate `Recall() >= 0.6`,
- the built-in fairness constraint `DemographicParity("group") <= 0.05`,
  whose group ids travel as side information in the `x` dict,
- `Recall`, `DemographicParity` and `EqualizedOdds` together,

are fitted side by side in this process (interleaved rounds, rotating
order; see `common.py`). Printed: milliseconds per step and the median of
the per-round ratios to the plain model. Goals (issue 12): ratio <= 1.05
with 1–3 constraints, <= 1.10 with 10.

With `--ops`, the graph ops of one training step are counted per candidate
(by op type, against the plain model); with `--profile`, the TensorFlow
profiler times each op type over a few hundred steps of the plain model and
of each constrained one, in graph mode with `steps_per_execution=32`.

Writes `benchmarks/results/step_overhead.json` (`step_overhead_quick.json`
with `--quick`).

Run: `.venv/bin/python benchmarks/step_overhead.py [--quick] [--ops]
[--profile] [--models mlp cnn] [--modes graph xla] [--spe 1 32]`.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from common import Candidate
from common import calibrate_steps
from common import compare
from common import count_ops
from common import machine_info
from common import paired_ratio
from common import print_summary
from common import repeated_batch
from common import summarize
from common import write_json

import tfconstrain as tfc

BATCH = 256
PLAIN = "plain keras.Model"


def moment(k: int):
    """The constraint function `mean(ŷᵏ)`."""

    def fn(batch):
        return keras.ops.mean(keras.ops.power(batch.y_pred, k))

    fn.__name__ = f"moment_{k}"
    return fn


def penalty_loss(count: int):
    """`bce + Σ_k 0.01 · mean(ŷᵏ)`: the same functions as fixed penalties
    in a plain Keras loss (what users write without tfconstrain)."""

    def loss(y_true, y_pred):
        total = keras.losses.binary_crossentropy(y_true, y_pred)
        total = keras.ops.mean(total)
        for k in range(1, count + 1):
            total += 0.01 * keras.ops.mean(keras.ops.power(y_pred, k))
        return total

    return loss


# Plain models whose loss carries the callables as fixed penalty terms:
# the constrained step against them is what tfconstrain adds beyond the
# constraint functions themselves (their forward and backward ops).
PENALTY_BASELINES = {
    "1 callable": "plain + 1 penalty term",
    "3 callables": "plain + 3 penalty terms",
    "10 callables": "plain + 10 penalty terms",
}


def callables(count: int):
    def add(model):
        for k in range(1, count + 1):
            model.add_constraint(moment(k), "<=", 0.5 / k)

    return add


def recall(model):
    model.add_constraint(tfc.constraints.Recall() >= 0.6)


def demographic_parity(model):
    model.add_constraint(tfc.constraints.DemographicParity("group") <= 0.05)


def three_builtins(model):
    recall(model)
    demographic_parity(model)
    model.add_constraint(tfc.constraints.EqualizedOdds("group") <= 0.05)


# name -> (adds the constraints, uses side information, goal)
CONSTRAINT_SETS = {
    "1 callable": (callables(1), False, 1.05),
    "3 callables": (callables(3), False, 1.05),
    "10 callables": (callables(10), False, 1.10),
    "Recall >= 0.6": (recall, False, 1.05),
    "DemographicParity(group) <= 0.05": (demographic_parity, True, 1.05),
    "Recall + DP + EqualizedOdds": (three_builtins, True, 1.05),
}
QUICK_SETS = ("1 callable", "DemographicParity(group) <= 0.05")


def mlp_data():
    """A batch of 256 Adult training rows: features, labels, sex ids."""
    data = tfc.datasets.load_adult()
    return (
        data.x_train[:BATCH],
        data.y_train[:BATCH, None],
        data.sex_train[:BATCH],
    )


def cnn_data():
    """256 synthetic 16×16 grey images; label and group from the pixels."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 16, 16, 1)).astype("float32")
    labels = (images[:, :8].mean(axis=(1, 2, 3)) > 0).astype("float32")
    groups = (images[:, :, :8].mean(axis=(1, 2, 3)) > 0).astype("int32")
    return images, labels[:, None], groups


def layers(arch: str, input_shape):
    inputs = keras.Input(input_shape, name="features")
    if arch == "mlp":
        hidden = keras.layers.Dense(64, activation="relu")(inputs)
    else:
        hidden = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
        hidden = keras.layers.MaxPooling2D()(hidden)
        hidden = keras.layers.Conv2D(16, 3, activation="relu")(hidden)
        hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return inputs, outputs


def build(arch, input_shape, constraint_set, jit: bool, spe: int):
    keras.utils.set_random_seed(0)
    inputs, outputs = layers(arch, input_shape)
    compile_args = {
        "optimizer": "adam",
        "loss": "binary_crossentropy",
        "jit_compile": jit,
        "steps_per_execution": spe,
    }
    if constraint_set is None or constraint_set in PENALTY_BASELINES.values():
        if constraint_set is not None:
            count = int(constraint_set.split()[2])
            compile_args["loss"] = penalty_loss(count)
        model = keras.Model(inputs, outputs)
        model.compile(**compile_args)
        return model
    model = tfc.ConstrainedModel(inputs, outputs)
    CONSTRAINT_SETS[constraint_set][0](model)
    model.compile(**compile_args, dual_optimizer=0.01)
    return model


def block_candidates(arch, arrays, sets, jit, spe) -> dict:
    x, y, group = arrays
    side = {"features": x, "group": group}
    candidates = {
        PLAIN: Candidate(
            build(arch, x.shape[1:], None, jit, spe),
            lambda steps: repeated_batch(x, y, steps),
        )
    }
    for name in sets:
        if name in PENALTY_BASELINES:
            candidates[PENALTY_BASELINES[name]] = Candidate(
                build(arch, x.shape[1:], PENALTY_BASELINES[name], jit, spe),
                lambda steps: repeated_batch(x, y, steps),
            )
        uses_side = CONSTRAINT_SETS[name][1]
        candidates[name] = Candidate(
            build(arch, x.shape[1:], name, jit, spe),
            (lambda steps: repeated_batch(side, y, steps))
            if uses_side
            else (lambda steps: repeated_batch(x, y, steps)),
        )
    return candidates


def op_counts(candidates: dict) -> dict:
    """Ops per step of each candidate, and the op types it adds."""
    counts = {
        name: count_ops(c.model, c.data(1)) for name, c in candidates.items()
    }
    plain = counts[PLAIN]
    result = {}
    for name, count in counts.items():
        extra = collections.Counter(count)
        extra.subtract(plain)
        top = [(op, n) for op, n in extra.most_common(12) if n > 0]
        result[name] = {
            "ops": sum(count.values()),
            "extra_ops": sum(count.values()) - sum(plain.values()),
            "extra_by_type": dict(top),
        }
    return result


def profile_op_times(candidate: Candidate, steps: int) -> dict:
    """Per step: ops executed and microseconds spent, by op type and scope.

    Runs `steps` training steps of a freshly built model under
    `tf.profiler.experimental` and reads the executor's op events (named
    `scope/.../op_name:OpType`) on the host compute lines. The model must be
    fresh: once TensorFlow's executor has timed a kernel a few hundred
    times and found it cheap, it runs it inline and no longer traces it. The
    profiler adds its own cost to every op event, so the times are inflated
    for small ops: compare candidates, not absolutes.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    candidate.model.fit(candidate.data(2), epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(
            logdir,
            # Level 3: every op, not only those TensorFlow deems expensive.
            options=tf.profiler.experimental.ProfilerOptions(
                host_tracer_level=3, python_tracer_level=0
            ),
        )
        candidate.model.fit(candidate.data(steps), epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        (path,) = Path(logdir).rglob("*.xplane.pb")
        space = xplane_pb2.XSpace.FromString(path.read_bytes())
    by_type, by_scope, count = (collections.Counter() for _ in range(3))
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if "::" in name or ":" not in name:
                    continue  # executor bookkeeping, not an op
                op_name, op_type = name.rsplit(":", 1)
                op_name = op_name.rsplit("StatefulPartitionedCall/", 1)[-1]
                scope = _scope(op_name, candidate.model.name)
                microseconds = event.duration_ps / 1e6 / steps
                by_type[op_type] += microseconds
                by_scope[scope] += microseconds
                count[op_type] += 1 / steps
    return {"type": by_type, "scope": by_scope, "count": count}


def _scope(op_name: str, model_name: str) -> str:
    """A coarse, model-independent scope of an op for the profile table.

    `forward`/`backward` (the model's layers), `optimizer` (the primal
    step), otherwise the op's top-level name without its uniquifying
    suffix (`concat_1` → `concat`), `backward/` in front for gradients.
    """
    parts = op_name.split("/")
    prefix = ""
    if parts[0] == "gradient_tape" and len(parts) > 1:
        prefix, parts = "backward/", parts[1:]
    if parts[0].startswith(model_name):
        return prefix + "model layers" if prefix else "forward: model layers"
    if parts[0].startswith("adam"):
        return "optimizer"
    return prefix + re.sub(r"(_\d+)+$", "", parts[0])


def profile_block(candidates: dict, steps: int) -> dict:
    """Profiled op time of each candidate and what it adds to the plain."""
    times = {name: profile_op_times(c, steps) for name, c in candidates.items()}
    plain = times[PLAIN]
    result = {}
    for name, profile in times.items():
        row = {
            "ops_per_step": round(sum(profile["count"].values()), 1),
            "op_us_per_step": round(sum(profile["type"].values()), 1),
        }
        for key in ("type", "scope"):
            extra = collections.Counter(profile[key])
            extra.subtract(plain[key])
            row[f"extra_us_by_{key}"] = {
                op: round(us, 1) for op, us in extra.most_common(10) if us > 1
            }
        extra = collections.Counter(profile["count"])
        extra.subtract(plain["count"])
        row["extra_ops_by_type"] = {
            op: round(n, 1) for op, n in extra.most_common(12) if n >= 0.5
        }
        result[name] = row
    return result


def print_matrix(blocks: list, sets: list) -> dict:
    """Ratios of every set (rows) in every block (columns); the worst.

    A cell reads `wall/CPU`: the median paired ratio of wall time, then of
    process CPU time. Returns the worst wall ratio of each set.
    """
    labels = [
        f"{b['model']} {b['mode']} spe{b['steps_per_execution']}"
        for b in blocks
    ]
    print("\npaired ratio to plain Keras, wall/CPU time (median of rounds):")
    print(f"  {'':<34} " + " ".join(f"{label:>16}" for label in labels))
    worst = {}
    for name in sets:
        cells = []
        for block in blocks:
            row = block["results"][name]
            cells.append(
                f"{row['paired_ratio']:.2f}/{row['cpu_paired_ratio']:.2f}"
            )
            worst[name] = max(worst.get(name, 0.0), row["paired_ratio"])
        goal = CONSTRAINT_SETS[name][2]
        verdict = "meets" if worst[name] <= goal else "misses"
        print(
            f"  {name:<34} "
            + " ".join(f"{cell:>16}" for cell in cells)
            + f"   worst {worst[name]:.2f} {verdict} {goal}"
        )
    penalized = [name for name in sets if name in PENALTY_BASELINES]
    if penalized:
        print(
            "\nconstrained step / the same functions as fixed penalty terms "
            "in a plain Keras loss (what tfconstrain itself adds), wall/CPU:"
        )
        for name in penalized:
            cells = []
            for block in blocks:
                row = block["versus_penalty"][name]
                cells.append(
                    f"{row['paired_ratio']:.2f}/{row['cpu_paired_ratio']:.2f}"
                )
            print(f"  {name:<34} " + " ".join(f"{cell:>16}" for cell in cells))
    return worst


def versus_penalty(samples: dict, sets: list) -> dict:
    """Paired ratios of each callables set to its fixed-penalty twin."""
    result = {}
    for name in sets:
        if name not in PENALTY_BASELINES:
            continue
        twin = samples[PENALTY_BASELINES[name]]
        ratio, iqr = paired_ratio(samples[name]["wall"], twin["wall"])
        cpu_ratio, _ = paired_ratio(samples[name]["cpu"], twin["cpu"])
        result[name] = {
            "paired_ratio": ratio,
            "ratio_iqr": iqr,
            "cpu_paired_ratio": cpu_ratio,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI: < 1 min")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--modes", nargs="+", default=["graph", "xla"])
    parser.add_argument("--spe", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--sets", nargs="+", default=list(CONSTRAINT_SETS))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.4,
        help="target duration of one measurement (steps are calibrated)",
    )
    parser.add_argument("--ops", action="store_true", help="count graph ops")
    parser.add_argument(
        "--profile", action="store_true", help="op times (profiler)"
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.modes, args.spe = ["mlp"], ["graph"], [1, 32]
        args.sets, args.rounds, args.seconds = list(QUICK_SETS), 5, 0.15
    unknown = set(args.sets) - set(CONSTRAINT_SETS)
    if unknown:
        sys.exit(f"Unknown --sets {sorted(unknown)}; one of {CONSTRAINT_SETS}")

    info_before = machine_info()
    print(
        f"{info_before['date']}  {info_before['cpu']}, "
        f"{info_before['cores']} cores, load "
        f"{info_before['load_average_1_5_15']}, TF threads "
        f"{info_before['tensorflow_threads']}"
    )
    data = {"mlp": mlp_data, "cnn": cnn_data}
    blocks = []
    for arch in args.models:
        arrays = data[arch]()
        for mode in args.modes:
            for spe in args.spe:
                candidates = block_candidates(
                    arch, arrays, args.sets, mode == "xla", spe
                )
                steps = calibrate_steps(
                    candidates[PLAIN], args.seconds, spe, minimum=2 * spe
                )
                samples = compare(candidates, steps, args.rounds)
                summary = summarize(samples, PLAIN)
                goals = {name: CONSTRAINT_SETS[name][2] for name in args.sets}
                print(
                    f"\n{arch}, {mode}, steps_per_execution={spe} "
                    f"({steps} steps per measurement, {args.rounds} rounds)"
                )
                print_summary(summary, PLAIN, goals)
                block = {
                    "model": arch,
                    "mode": mode,
                    "steps_per_execution": spe,
                    "steps": steps,
                    "rounds": args.rounds,
                    "goals": goals,
                    "results": summary,
                    "versus_penalty": versus_penalty(samples, args.sets),
                }
                if args.ops and mode == "graph" and spe == args.spe[0]:
                    block["op_counts"] = op_counts(candidates)
                    print("  graph ops per step (extra over plain):")
                    for name, row in block["op_counts"].items():
                        print(
                            f"    {name:<34} {row['ops']:>5} "
                            f"(+{row['extra_ops']}) {row['extra_by_type']}"
                        )
                if args.profile and mode == "graph" and spe == max(args.spe):
                    keras.backend.clear_session()
                    fresh = block_candidates(
                        arch, arrays, args.sets, mode == "xla", spe
                    )
                    block["op_times"] = profile_block(fresh, 4 * spe)
                    print("  profiled ops executed and op time per step:")
                    for name, row in block["op_times"].items():
                        print(
                            f"    {name:<34} {row['ops_per_step']:>6} ops "
                            f"{row['op_us_per_step']:>7.1f} µs; extra ops "
                            f"{row['extra_ops_by_type']}; extra µs by scope "
                            f"{row['extra_us_by_scope']}"
                        )
                blocks.append(block)
                keras.backend.clear_session()

    info_after = machine_info()
    worst = print_matrix(blocks, args.sets)
    print(f"load average after: {info_after['load_average_1_5_15']}")
    path = write_json(
        "step_overhead_quick" if args.quick else "step_overhead",
        {
            "benchmark": "step_overhead",
            "machine": info_before,
            "load_average_after": info_after["load_average_1_5_15"],
            "arguments": vars(args),
            "blocks": blocks,
            "worst_paired_ratio": worst,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
