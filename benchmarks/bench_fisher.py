"""Per-sample Fisher trace ‖∇θ ℓ(x_j, y_j)‖²: our two methods against a loop over samples, in one process.

    python benchmarks/bench_fisher.py [--quick] [--threads 2]

Cases (eval mode, float32, random data, 256 samples):

- ``small_cnn`` width 16 (24k parameters: the CNN the issue's estimates were made on) and width 32
  (95k, the default) on 32×32×3 inputs: conv-heavy, so compute-bound;
- ``resnet18`` width 16 (0.7M parameters) on 32×32×3 inputs;
- ``mlp`` 3072-256-10 on flattened 32×32×3 inputs (789k parameters in dense layers).

The loop is the straightforward reference: one forward and backward pass per sample with
``torch.autograd.grad``. ``layerwise`` is the default method (per-layer norms from one batched
forward and backward pass), ``vmap`` the fallback (vmap over samples of grad). A full-batch forward
and backward pass of the mean loss is printed as the floor: the layerwise method does the same
passes plus per-layer norms, so it cannot beat it. Cases are timed in interleaved rounds after a
warm-up; medians of wall-clock and CPU time; compare the ratios. ``OMP_WAIT_POLICY=PASSIVE`` unless
set (spinning OpenMP threads distort timings on a shared machine).
Measured numbers, with the conditions they were taken under: ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import timed  # noqa: E402  (benchmarks/ is the script's folder)

from landscape.fisher import per_sample_fisher_trace  # noqa: E402

warnings.filterwarnings("ignore")


def cases() -> list[tuple[str, nn.Module, int]]:
    """(label, model, image side) of every benchmarked setting."""
    from ensembles.models.zoo import build
    return [('small_cnn width 16, 32×32', build("small_cnn", 10, width=16), 32),
            ('small_cnn width 32, 32×32', build("small_cnn", 10), 32),
            ('resnet18 width 16, 32×32', build("resnet18", 10, width=16), 32),
            ('mlp 3072-256-10, 32×32', build("mlp", 10, hidden=(256,)), 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds: a smoke run")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    samples = 32 if arguments.quick else 256
    rounds = 2 if arguments.quick else 5
    print(f"{samples} samples, float32, {torch.get_num_threads()} threads, median of {rounds} interleaved rounds, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print("speed-up = loop time / case time, wall clock [CPU]")
    print(f"{'model, input':28s} {'params':>7s} | {'loop ms/sample':>14s} | "
          f"{'layerwise 64':>13s} {'layerwise 256':>13s} {'vmap 64':>13s} {'floor':>13s} | max rel. diff")
    for label, model, side in cases():
        torch.manual_seed(0)
        model.eval()
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        inputs = torch.randn(samples, 3, side, side)
        targets = torch.randint(0, 10, (samples,))

        def loop_over_samples():
            traces = []
            for j in range(samples):
                gradient = torch.autograd.grad(F.cross_entropy(model(inputs[j:j + 1]), targets[j:j + 1]), parameters)
                traces.append(sum(part.pow(2).sum() for part in gradient))
            return torch.stack(traces)

        def ours(chunk, method):
            return lambda: per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=chunk,
                                                   method=method)

        def full_batch_backward():
            return torch.autograd.grad(F.cross_entropy(model(inputs), targets), parameters)

        functions = {"loop": loop_over_samples, "layerwise 64": ours(64, "layerwise"),
                     "layerwise 256": ours(256, "layerwise"), "vmap 64": ours(64, "vmap"), "floor": full_batch_backward}
        reference = loop_over_samples()
        error = max(((functions[name]() - reference).abs().max() / reference.abs().max()).item()
                    for name in ("layerwise 64", "layerwise 256", "vmap 64"))
        results = timed(functions, rounds)
        base_wall, base_cpu = results["loop"]
        dimension = sum(parameter.numel() for parameter in parameters)
        cells = " ".join(f"{base_wall / wall:6.1f} [{base_cpu / cpu:4.1f}]" for name, (wall, cpu) in results.items()
                         if name != "loop")
        print(f"{label:28s} {dimension:7d} | {1e3 * base_wall / samples:14.3f} | {cells} | {error:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
