"""Hessian trace and Hessian-vector products: our engine against the alternatives, in one process.

    python benchmarks/bench_hessian.py [--quick]
    python benchmarks/bench_hessian.py --model resnet18-w16 --trace-only --probes 10 --rounds 2

Model ``ensembles.models.zoo.build("small_cnn", 10)`` (a stand-in CNN of the same shape if that module
is missing) in eval mode, float32, random 32×32×3 batches of 128, two threads. The machine is
shared, so every case is timed in interleaved rounds and the median wall-clock and CPU (process)
times are reported; compare the ratios, not the seconds.

1. Cost per Hessian-vector product on one batch, ``K`` probes, the graph built once per call:
   reverse over reverse on a retained graph (one probe at a time, or ``c`` probes vmapped), a fresh
   graph per probe (PyHessian's dataloader mode), ``torch.func`` forward over reverse (per probe,
   and vmapped over probes), and curvlinops' ``HessianLinearOperator`` (vmapped ``jvp∘jacrev``).
2. Hutchinson trace with ``P`` probes, every probe spent: ours against PyHessian 0.1 on one batch
   and in its dataloader mode over 4 batches, and against curvlinops' ``hutchinson_trace``.
Measured numbers, with the conditions they were taken under, and why the trace cannot reach 2×
against PyHessian: ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import timed  # noqa: E402  (benchmarks/ is the script's folder)

from landscape.hessian import hessian_trace  # noqa: E402
from landscape.hvp import LossHessian, rademacher_rows  # noqa: E402

warnings.filterwarnings("ignore")


def small_cnn() -> tuple[nn.Module, str]:
    try:
        from ensembles.models.zoo import build
        return build("small_cnn", 10), 'ensembles.models.zoo.build("small_cnn", 10)'
    except ImportError:  # stand-in of the same shape while ensembles/models/zoo.py is missing
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
        return model, "stand-in small CNN"


def table(title: str, results: dict, per: int, reference: str) -> None:
    print(f"\n{title}", flush=True)
    print(f"  {'case':58s} {'wall s':>8s} {'cpu s':>8s} {'wall ×':>7s} {'cpu ×':>7s}")
    base_wall, base_cpu = results[reference]
    for name, (wall, cpu) in results.items():
        print(f"  {name:58s} {wall / per:8.4f} {cpu / per:8.4f} {wall / base_wall:7.2f} {cpu / base_cpu:7.2f}")
    print(f"  (seconds per {'product' if per > 1 else 'call'}; ratios are time / time of '{reference}': above 1 is slower)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="few probes and rounds: a smoke run")
    parser.add_argument("--model", choices=["small_cnn", "resnet18-w16"], default="small_cnn")
    parser.add_argument("--probes", type=int, default=None, help="trace probes P (default 20)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--trace-only", action="store_true", help="skip part 1 (the product engines)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    quick = arguments.quick
    probes_per_call = 4 if quick else 8  # K
    trace_probes = arguments.probes or (4 if quick else 20)  # P
    rounds = arguments.rounds or (2 if quick else 3)
    batch_size = 128

    if arguments.model == "small_cnn":
        model, model_name = small_cnn()
    else:
        from ensembles.models.zoo import build
        model, model_name = build("resnet18", 10, width=16), 'ensembles.models.zoo.build("resnet18", 10, width=16)'
    model.eval()
    batches = [(torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))) for _ in range(4)]
    inputs, targets = batches[0]
    names = [name for name, _ in model.named_parameters()]
    parameters = [parameter for _, parameter in model.named_parameters()]
    dimension = sum(parameter.numel() for parameter in parameters)
    print(f"{model_name}: {dimension} parameters; batch {batch_size}×3×32×32 float32; "
          f"{torch.get_num_threads()} threads; K={probes_per_call} probes per call, P={trace_probes} trace probes; "
          f"median of {rounds} interleaved rounds")

    block = rademacher_rows(1, 0, probes_per_call, dimension, torch.float32, torch.device("cpu"))
    listed = [[piece.view_as(parameter) for piece, parameter in zip(row.split([p.numel() for p in parameters]), parameters)]
              for row in block]
    detached = {name: parameter.detach() for name, parameter in zip(names, parameters)}

    def loss_of(values):
        return F.cross_entropy(functional_call(model, values, (inputs,)), targets)

    def ours(chunk):
        return lambda: LossHessian(model, F.cross_entropy, [(inputs, targets)], probe_chunk_size=chunk).matmat(block)

    def retained_graph_plain_batch_norm():  # our engine without the BatchNormAsAffine rewrite
        gradient = torch.autograd.grad(F.cross_entropy(model(inputs), targets), parameters, create_graph=True)
        return [torch.autograd.grad(gradient, parameters, vector, retain_graph=True) for vector in listed]

    def fresh_graph_per_probe():
        products = []
        for vector in listed:
            gradient = torch.autograd.grad(F.cross_entropy(model(inputs), targets), parameters, create_graph=True)
            products.append(torch.autograd.grad(gradient, parameters, vector))
        return products

    def forward_over_reverse():
        return [jvp(grad(loss_of), (detached,), (dict(zip(names, vector)),))[1] for vector in listed]

    def forward_over_reverse_vmapped():
        stacked = {name: torch.stack([vector[index] for vector in listed]) for index, name in enumerate(names)}
        return vmap(lambda direction: jvp(grad(loss_of), (detached,), (direction,))[1])(stacked)

    cases = {
        "reverse over reverse, retained graph, 1 probe at a time": ours(1),
        "reverse over reverse, retained graph, 4 probes vmapped": ours(4),
        f"reverse over reverse, retained graph, {probes_per_call} probes vmapped": ours(probes_per_call),
        "reverse over reverse, retained graph, plain batch norm": retained_graph_plain_batch_norm,
        "reverse over reverse, fresh graph per probe (PyHessian)": fresh_graph_per_probe,
        "torch.func jvp(grad), per probe": forward_over_reverse,
        "torch.func vmap over probes of jvp(grad)": forward_over_reverse_vmapped,
    }
    curvlinops = None
    if arguments.trace_only:  # part 2 against PyHessian only
        cases = {}
    else:
        try:
            import curvlinops
            operator = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), parameters, [(inputs, targets)],
                                                        check_deterministic=False)
            cases["curvlinops HessianLinearOperator @ V (vmapped jvp∘jacrev)"] = lambda: operator @ block.T
            difference = (operator @ block.T).T - ours(1)()
            print(f"curvlinops {getattr(curvlinops, '__version__', '')} agrees with ours: max |ΔHV| / max |HV| = "
                  f"{(difference.abs().max() / ours(1)().abs().max()).item():.1e}")
        except ImportError:
            print("curvlinops is not installed: its rows are left out")
    if cases:
        table(f"1. Hessian-vector products on one batch ({probes_per_call} per call, graph built once per call)",
              timed(cases, rounds), probes_per_call, "reverse over reverse, retained graph, 1 probe at a time")

    from pyhessian import hessian as PyHessian

    def pyhessian_trace(**data):
        def run():
            computer = PyHessian(model, F.cross_entropy, cuda=False, **data)
            samples = computer.trace(maxIter=trace_probes, tol=-math.inf)  # tol=−inf: no early stop
            model.zero_grad(set_to_none=True)
            assert len(samples) == trace_probes
            return samples
        return run

    def our_trace(data, chunk=1):
        return lambda: hessian_trace(model, F.cross_entropy, data, n_probes=trace_probes, probe_chunk_size=chunk)

    for title, data, pyhessian_data in (("one batch", [(inputs, targets)], dict(data=(inputs, targets))),
                                        ("4 batches (PyHessian's dataloader mode)", batches, dict(dataloader=batches))):
        cases = {
            "PyHessian 0.1 trace()": pyhessian_trace(**pyhessian_data),
            "ours, hessian_trace (1 probe at a time)": our_trace(data),
        }
        if curvlinops is not None:
            def curvlinops_trace(data=data):
                operator = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), parameters, data,
                                                            check_deterministic=False)
                return curvlinops.hutchinson_trace(operator, trace_probes)
            cases["curvlinops hutchinson_trace"] = curvlinops_trace
        table(f"2. Hutchinson trace, {trace_probes} probes, {title}", timed(cases, rounds, warm_up=False), 1,
              "ours, hessian_trace (1 probe at a time)")


if __name__ == "__main__":
    main()
