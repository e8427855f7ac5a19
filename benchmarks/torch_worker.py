"""PyTorch side of `vs_cooper.py`: plain PyTorch and Cooper on Adult.

Runs in the benchmark environment `.venv-bench` (PyTorch CPU, cooper-optim,
numpy; no TensorFlow). `vs_cooper.py` starts it once and sends it one JSON
request per line on stdin, `{"kind": "plain" | "cooper", "epochs": E,
"seed": s, "dual_learning_rate": η}`; it answers each with one JSON line
(the wall and process CPU time of every epoch, train and test accuracy and
DP gap, the final multipliers). The first line it prints describes the
environment.

The training loop is the fastest plain PyTorch loop for data that fits in
memory: the whole split is one tensor, each epoch draws a permutation and
slices batches of 256 from it (no `DataLoader`, whose per-example
collation would dominate the epoch time of so small a model).

Run alone (one request per line):
`.venv-bench/bin/python benchmarks/torch_worker.py --threads 1`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cooper
import numpy as np
import torch
import torch.nn.functional as F
from adult_problem import ADAM_EPSILON
from adult_problem import BATCH
from adult_problem import BOUND
from adult_problem import HIDDEN
from adult_problem import LEARNING_RATE
from adult_problem import load_adult
from adult_problem import scores


def build_model(num_features: int) -> torch.nn.Module:
    """The MLP, initialized as Keras does (Glorot uniform, zero biases)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(num_features, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 1),
    )
    for layer in (model[0], model[2]):
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model


def group_gaps(values, female, male, bound):
    """`(r_0 - r_1 - δ, r_1 - r_0 - δ)` of per-example `values`."""
    rate_female = (values * female).sum() / female.sum()
    rate_male = (values * male).sum() / male.sum()
    gap = rate_female - rate_male
    return torch.stack([gap, -gap]) - bound


class FairnessProblem(cooper.ConstrainedMinimizationProblem):
    """`min BCE s.t. r_0 - r_1 <= δ, r_1 - r_0 <= δ` (hard rates)."""

    def __init__(self, bound: float):
        super().__init__()
        self.bound = bound
        self.demographic_parity = cooper.Constraint(
            constraint_type=cooper.ConstraintType.INEQUALITY,
            formulation_type=cooper.formulations.Lagrangian,
            multiplier=cooper.multipliers.DenseMultiplier(num_constraints=2),
        )

    def compute_cmp_state(self, model, x, y, sex) -> cooper.CMPState:
        logits = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        female = (sex == 0).float()
        male = 1.0 - female
        # Primal: the probability as a smooth surrogate of the prediction;
        # dual ("strict"): the 0/1 prediction itself.
        surrogate = group_gaps(torch.sigmoid(logits), female, male, self.bound)
        hard = group_gaps((logits > 0).float(), female, male, self.bound)
        state = cooper.ConstraintState(
            violation=surrogate, strict_violation=hard
        )
        return cooper.CMPState(
            loss=loss, observed_constraints={self.demographic_parity: state}
        )


def train(tensors, data, kind: str, epochs: int, seed: int, dual_lr: float):
    torch.manual_seed(seed)
    x, y, sex = tensors
    model = build_model(x.shape[1])
    primal = torch.optim.Adam(
        model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPSILON
    )
    if kind == "cooper":
        problem = FairnessProblem(BOUND)
        dual = torch.optim.SGD(
            problem.dual_parameters(), lr=dual_lr, maximize=True
        )
        optimizer = cooper.optim.AlternatingDualPrimalOptimizer(
            cmp=problem, primal_optimizers=primal, dual_optimizers=dual
        )
    generator = torch.Generator().manual_seed(seed)
    count = x.shape[0]
    epoch_seconds, epoch_cpu_seconds = [], []
    for _ in range(epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        order = torch.randperm(count, generator=generator)
        for begin in range(0, count, BATCH):
            index = order[begin : begin + BATCH]
            if kind == "cooper":
                optimizer.roll(
                    compute_cmp_state_kwargs={
                        "model": model,
                        "x": x[index],
                        "y": y[index],
                        "sex": sex[index],
                    }
                )
            else:
                primal.zero_grad(set_to_none=True)
                logits = model(x[index]).squeeze(1)
                F.binary_cross_entropy_with_logits(logits, y[index]).backward()
                primal.step()
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)

    def predict(features):
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(features))).numpy()

    result = {
        "epoch_seconds": epoch_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "scores": scores(predict, data),
    }
    if kind == "cooper":
        multiplier = problem.demographic_parity.multiplier.weight
        result["multipliers"] = multiplier.detach().numpy().tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="0: default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    data = load_adult()
    tensors = (
        torch.from_numpy(data.x_train),
        torch.from_numpy(data.y_train),
        torch.from_numpy(data.sex_train.astype(np.int64)),
    )
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "cooper": cooper.__version__,
                "threads": torch.get_num_threads(),
                "interop_threads": torch.get_num_interop_threads(),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        result = train(
            tensors,
            data,
            request["kind"],
            request["epochs"],
            request["seed"],
            request["dual_learning_rate"],
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
