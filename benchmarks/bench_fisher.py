"""Per-sample Fisher trace ‖∇θ ℓ(x_j, y_j)‖²: vmap(grad) against a loop over samples, in one process.

    /work/venv/bin/python benchmarks/bench_fisher.py [--quick]

Models: ``ensembles.models.build("small_cnn", 10)`` (conv-heavy: compute-bound) and
``build("mlp", 10, hidden=(256,))`` on flattened 32×32×3 inputs (small dense layers: the per-sample
loop is dominated by per-call overhead), eval mode, float32, random data, two threads. The loop
is the straightforward reference: one forward and backward pass per sample with
``torch.autograd.grad``. A full-batch forward and backward pass (mean loss, no per-sample anything)
is printed as the floor no per-sample method can beat by much. Cases are timed in interleaved
rounds; medians of wall-clock and CPU time are reported; compare the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.fisher import per_sample_fisher_trace  # noqa: E402

warnings.filterwarnings("ignore")


def models() -> list[tuple[str, nn.Module]]:
    try:
        from ensembles.models import build
        return [('build("small_cnn", 10)', build("small_cnn", 10)),
                ('build("mlp", 10, hidden=(256,))', build("mlp", 10, hidden=(256,)))]
    except ImportError:  # stand-ins of the same shapes while ensembles/models.py is missing
        cnn = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(3072, 256), nn.ReLU(), nn.Linear(256, 10))
        return [("stand-in small CNN", cnn), ("stand-in MLP 3072-256-10", mlp)]


def timed(cases: dict, rounds: int) -> dict:
    """Median wall and CPU seconds of every case, measured in interleaved rounds (after one warm-up)."""
    for function in cases.values():
        function()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(rounds):
        for name, function in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds: a smoke run")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    samples = 32 if arguments.quick else 256
    rounds = 2 if arguments.quick else 5
    inputs = torch.randn(samples, 3, 32, 32)
    targets = torch.randint(0, 10, (samples,))
    print(f"{samples} samples of 3×32×32, float32, {torch.get_num_threads()} threads, median of {rounds} interleaved rounds")

    for model_name, model in models():
        model.eval()
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

        def loop_over_samples():
            traces = []
            for j in range(samples):
                gradient = torch.autograd.grad(F.cross_entropy(model(inputs[j:j + 1]), targets[j:j + 1]), parameters)
                traces.append(sum(part.pow(2).sum() for part in gradient))
            return torch.stack(traces)

        def full_batch_backward():
            return torch.autograd.grad(F.cross_entropy(model(inputs), targets), parameters)

        def ours(chunk):
            return lambda: per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=chunk)

        reference = loop_over_samples()
        error = ((ours(64)() - reference).abs().max() / reference.abs().max()).item()
        cases = {"loop over samples (autograd.grad per sample)": loop_over_samples}
        for chunk in (16, 64, 256):
            cases[f"per_sample_fisher_trace, chunk_size={chunk}"] = ours(chunk)
        cases["floor: one full-batch forward+backward (mean loss)"] = full_batch_backward
        results = timed(cases, rounds)
        dimension = sum(parameter.numel() for parameter in parameters)
        print(f"\n{model_name}: {dimension} parameters; max relative difference to the loop {error:.1e}")
        print(f"  {'case':52s} {'wall ms/sample':>15s} {'cpu ms/sample':>14s} {'speed-up wall':>14s} {'cpu':>6s}")
        base_wall, base_cpu = results["loop over samples (autograd.grad per sample)"]
        for name, (wall, cpu) in results.items():
            print(f"  {name:52s} {1e3 * wall / samples:15.3f} {1e3 * cpu / samples:14.3f} "
                  f"{base_wall / wall:14.1f} {base_cpu / cpu:6.1f}")
        print("  (speed-up = loop time / case time)")


if __name__ == "__main__":
    main()
