"""Evaluation in channels-last layout on a CPU (landscape.layout.evaluation_layout_) against the
default (N, C, H, W) layout, side by side.

1. ``forward``: one eval-mode forward pass of a batch of 256 (32x32x3) through small_cnn (widths 8,
   16, 32) and CIFAR ResNet-18 (widths 16, 64), without gradients.
2. ``connectivity``: what ``sharpdiv connectivity`` does per pair of the single-basin study
   (examples/single-basin.toml): :func:`landscape.connectivity.interpolate` between two small_cnn
   width-16 networks at 21 alphas, every point's BatchNorm statistics recomputed from 1079
   samples (digits' training split) and its loss and accuracy on 359 (its test split).
3. ``logits``: :func:`ensembles.runs.logit_cache.compute_member_logits` of three small_cnn width-16
   members on 359 x 11 images (the test split and ten corrupted slices' worth).

The straightforward side is the same code with the layout step skipped. Random weights and images
(the cost does not depend on the values); the outputs of both sides are compared. Medians of
interleaved rounds (benchmarks/interleaved.py); the machine is shared, so read the ratios.

    python benchmarks/bench_layout.py [--quick] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits distort timings on a shared machine

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.interleaved import timed  # noqa: E402
from ensembles.data.datasets import ImageDataset  # noqa: E402
from ensembles.models.zoo import build  # noqa: E402
from ensembles.runs import logit_cache  # noqa: E402
from landscape import connectivity, layout  # noqa: E402


@contextlib.contextmanager
def default_layout():
    """The straightforward version: the layout step does nothing."""
    modules = (connectivity, logit_cache)
    saved = [module.evaluation_layout_ for module in modules]
    for module in modules:
        module.evaluation_layout_ = lambda network, device: network
    try:
        yield
    finally:
        for module, function in zip(modules, saved):
            module.evaluation_layout_ = function


def network(name: str, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(name, 10, width=width).eval()


def forward_cases(rounds: int) -> None:
    images = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"\n1. forward pass, batch 256, eval mode, no gradients; median of {rounds} rounds")
    print(f"{'model':<18}{'default ms':>12}{'channels-last ms':>18}{'ratio':>8}{'max |dlogit|':>14}")
    for name, width in (("small_cnn", 8), ("small_cnn", 16), ("small_cnn", 32), ("resnet18", 16), ("resnet18", 64)):
        plain = network(name, width, 1)
        fast = layout.evaluation_layout_(copy.deepcopy(plain), "cpu")
        with torch.no_grad():
            times = timed({"default": lambda: plain(images), "channels-last": lambda: fast(images)}, rounds)
            difference = (plain(images) - fast(images)).abs().max().item()
        (wall_default, _), (wall_fast, _) = times["default"], times["channels-last"]
        print(f"{name + ' w' + str(width):<18}{1000 * wall_default:>12.1f}{1000 * wall_fast:>18.1f}"
              f"{wall_fast / wall_default:>8.2f}{difference:>14.1e}")


def connectivity_case(rounds: int) -> None:
    generator = torch.Generator().manual_seed(0)
    training = [torch.randn(256, 3, 32, 32, generator=generator) for _ in range(4)]
    training.append(torch.randn(1079 - 4 * 256, 3, 32, 32, generator=generator))
    test = [(torch.randn(256, 3, 32, 32, generator=generator), torch.randint(0, 10, (256,), generator=generator)),
            (torch.randn(103, 3, 32, 32, generator=generator), torch.randint(0, 10, (103,), generator=generator))]
    first, second = network("small_cnn", 16, 1), network("small_cnn", 16, 2)
    results = {}

    def measure(name):
        def run():
            results[name] = connectivity.interpolate(first, second, F.cross_entropy, test, alphas=21,
                                                     bn_batches=training)
        return run

    def straightforward():
        with default_layout():
            measure("default")()

    times = timed({"default": straightforward, "channels-last": measure("channels-last")}, rounds)
    difference = (results["default"].loss - results["channels-last"].loss).abs().max().item()
    accuracy = (results["default"].accuracy - results["channels-last"].accuracy).abs().max().item()
    print(f"\n2. one pair's path, 21 alphas, BatchNorm reset on 1079 samples, evaluated on 359, small_cnn w16; "
          f"median of {rounds} rounds")
    _print_times(times, f"max |dloss| {difference:.1e}, max |daccuracy| {accuracy:.1e}")


def logits_case(rounds: int) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (359 * 11, 32, 32, 3), dtype=torch.uint8, generator=generator).numpy()
    dataset = ImageDataset(images, torch.randint(0, 10, (359 * 11,), generator=generator).numpy(), name="random",
                           split="test", num_classes=10, mean=(0.3,) * 3, std=(0.3,) * 3)
    results = {}

    def measure(name):
        def run():
            members = [network("small_cnn", 16, seed) for seed in (1, 2, 3)]
            results[name] = logit_cache.compute_member_logits(members, dataset)
        return run

    def straightforward():
        with default_layout():
            measure("default")()

    times = timed({"default": straightforward, "channels-last": measure("channels-last")}, rounds)
    difference = (results["default"] - results["channels-last"]).abs().max().item()
    print(f"\n3. member logits, 3 small_cnn w16 members on {359 * 11} images; median of {rounds} rounds")
    _print_times(times, f"max |dlogit| {difference:.1e}")


def _print_times(times: dict, agreement: str) -> None:
    print(f"{'layout':<16}{'wall s':>9}{'CPU s':>9}")
    for name, (wall, cpu) in times.items():
        print(f"{name:<16}{wall:>9.3f}{cpu:>9.3f}")
    (wall_default, cpu_default), (wall_fast, cpu_fast) = times["default"], times["channels-last"]
    print(f"channels-last / default: wall {wall_fast / wall_default:.2f}, CPU {cpu_fast / cpu_default:.2f}; "
          f"{agreement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    rounds = 3 if arguments.quick else 7
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load}")
    forward_cases(3 * rounds)
    connectivity_case(rounds)
    logits_case(rounds)
    print(f"\nload average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
