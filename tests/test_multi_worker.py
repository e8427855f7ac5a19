"""`MultiWorkerMirroredStrategy`: two loopback workers train as one process.

Two worker processes (`TF_CONFIG` on 127.0.0.1, ports chosen free at run
time) and a one-process reference run `multi_worker_worker.py` on the same
global batches: `ConstrainedModel.fit` (with validation data), `evaluate`
and `constraint_report` of a model with a mean constraint and a
`DemographicParity` constraint on side information. Each worker must end
where the reference ends (weights, multipliers, logs, report), only the
chief may write under the callbacks' paths, and `BackupAndRestore` must
resume an interrupted two-worker run to the same final state.

The processes are started once for the module (about 15 s of CPU each);
every process runs in its own process group, killed on timeout or error.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("multi_worker_worker.py")
REPOSITORY = WORKER.parent.parent
# The workarounds are monkeypatched onto `ConstrainedModel` by the worker
# script until they are part of `tfconstrain/_keras_compat.py`.
PATCH = False
TIMEOUT = 300.0  # seconds for the whole cluster (normally ~40 s)
ATOL = 1e-5


def free_ports(count):
    """Ports the OS reports free (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "<no output>"
    return "\n".join(text[-lines:])


def run_cluster(root):
    """Runs the reference and two workers; returns their results by task."""
    temp = root / "tmp"
    temp.mkdir()
    environment = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="tensorflow",
        TMPDIR=str(temp),
        PYTHONPATH=os.pathsep.join(
            [str(REPOSITORY), os.environ.get("PYTHONPATH", "")]
        ),
    )
    environment.pop("TF_CONFIG", None)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    jobs = {"reference": (root / "reference", None)}
    for index in range(2):
        config = {
            "cluster": cluster,
            "task": {"type": "worker", "index": index},
        }
        jobs[f"worker{index}"] = (root / "cluster", json.dumps(config))
    processes = {}
    try:
        for task, (out_dir, tf_config) in jobs.items():
            out_dir.mkdir(exist_ok=True)
            env = dict(environment)
            if tf_config is not None:
                env["TF_CONFIG"] = tf_config
            arguments = [sys.executable, str(WORKER), str(out_dir)]
            if PATCH:
                arguments.append("--patch")
            if tf_config is not None:
                arguments.append("--canary")
            with open(root / f"{task}.log", "wb") as log:
                processes[task] = subprocess.Popen(
                    arguments,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + TIMEOUT
        for task, process in processes.items():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{task} did not finish within {TIMEOUT:.0f} s:\n"
                    + tail(root / f"{task}.log")
                )
            if process.returncode != 0:
                pytest.fail(
                    f"{task} exited with {process.returncode}:\n"
                    + tail(root / f"{task}.log")
                )
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    results = {}
    for task, (out_dir, _) in jobs.items():
        with open(out_dir / f"result_{task}.json") as f:
            results[task] = json.load(f)
    return results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_worker")
    results = run_cluster(root)
    return root, results


def flat_state(state):
    """Weights then multipliers (sorted by name) as one vector."""
    parts = [np.ravel(w) for w in state["weights"]]
    parts += [
        np.ravel(state["multipliers"][k]) for k in sorted(state["multipliers"])
    ]
    return np.concatenate(parts)


def workers(results):
    return [results["worker0"], results["worker1"]]


def test_cluster_is_two_workers_with_one_chief(cluster):
    _, results = cluster
    assert [w["replicas"] for w in workers(results)] == [2, 2]
    assert [w["is_chief"] for w in workers(results)] == [True, False]
    assert results["reference"]["replicas"] == 1


def test_workers_end_with_the_weights_and_multipliers_of_one_process(cluster):
    _, results = cluster
    reference = results["reference"]["uninterrupted"]
    # The constraints are active: multipliers moved away from 0.
    assert reference["multipliers"]["rate"] > 0.1
    assert max(reference["multipliers"]["demographic_parity"]) > 0.1
    for worker in workers(results):
        np.testing.assert_allclose(
            flat_state(worker["uninterrupted"]),
            flat_state(reference),
            atol=ATOL,
            err_msg=worker["task"],
        )


def test_workers_log_what_one_process_logs(cluster):
    _, results = cluster
    reference = results["reference"]["uninterrupted"]
    keys = {"loss", "rate", "rate_violation", "rate_multiplier"}
    keys |= {"demographic_parity", "demographic_parity_multiplier"}
    assert keys <= set(reference["history"])
    assert {f"val_{k}" for k in keys - {"rate_multiplier"}} <= set(
        reference["history"]
    )
    for worker in workers(results):
        logs = worker["uninterrupted"]
        assert set(logs["history"]) == set(reference["history"])
        for key, values in reference["history"].items():
            np.testing.assert_allclose(
                logs["history"][key], values, atol=ATOL, err_msg=key
            )
        assert set(logs["evaluate"]) == set(reference["evaluate"])
        for key, value in reference["evaluate"].items():
            np.testing.assert_allclose(
                logs["evaluate"][key], value, atol=ATOL, err_msg=key
            )
        assert set(logs["report"]) == set(reference["report"])
        for name, entry in reference["report"].items():
            for field in ("value", "multiplier"):
                np.testing.assert_allclose(
                    logs["report"][name][field],
                    entry[field],
                    atol=ATOL,
                    err_msg=f"{name} {field}",
                )


def test_backup_and_restore_resumes_an_interrupted_two_worker_run(cluster):
    _, results = cluster
    reference = results["reference"]["uninterrupted"]
    for worker in workers(results):
        resumed = worker["resumed"]
        # Interrupted after epoch 1 of 3: only epoch 2 runs after the
        # restore, from a model initialized with another seed.
        assert resumed["epochs_run"] == [2]
        np.testing.assert_allclose(
            flat_state(resumed),
            flat_state(reference),
            atol=ATOL,
            err_msg=worker["task"],
        )


def test_only_the_chief_writes_logs_and_checkpoints(cluster):
    root, results = cluster
    chief_dir = root / "cluster" / "chief"
    chief, other = workers(results)
    # Checkpoints: the chief saved under the callbacks' paths, the other
    # worker only elsewhere (its temporary directory).
    assert chief["saves"]
    assert all(Path(p).is_relative_to(chief_dir) for p in chief["saves"])
    assert other["saves"]
    assert not any(Path(p).is_relative_to(chief_dir) for p in other["saves"])
    assert (chief_dir / "checkpoint.weights.h5").is_file()
    assert (chief_dir / "backup" / "latest.weights.h5").is_file()
    # TensorBoard event file names carry the writing process id.
    events = list(chief_dir.rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} >= {"train", "validation"}
    assert any("multipliers" in e.parts for e in events)
    assert all(f".{chief['pid']}." in e.name for e in events), events
    # The other worker's temporary directories are gone.
    assert not list((root / "tmp").glob("tfconstrain_worker_*"))


@pytest.mark.xfail(
    strict=False,
    reason=(
        "keras#20585 / TF#72388: plain Keras `fit` fails under multi-worker "
        "MultiWorkerMirroredStrategy. If this passes (XPASS), Keras fixed it: "
        "remove the workarounds in tfconstrain/_keras_compat.py."
    ),
)
def test_plain_keras_fit_works_under_multi_worker(cluster):
    _, results = cluster
    for worker in workers(results):
        canary = worker["canary"]
        version = worker["keras"]
        assert canary["symbolic_build"] is None, (
            f"Keras {version}: _maybe_symbolic_build still fails: "
            f"{canary['symbolic_build']}"
        )
        assert canary["scalar_logs"] is None, (
            f"Keras {version}: reduce_per_replica still fails on scalar "
            f"logs: {canary['scalar_logs']}"
        )
