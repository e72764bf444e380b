"""Cost of Git Re-Basin weight matching for the CIFAR ResNet-18 next to one loss barrier.

For each width: two independently initialized ResNet-18s (10 classes); weight matching
(``match_weights``: sweeps until no group improves, seconds, sweeps), applying the permutation,
and one loss barrier between them with batch-norm statistics recomputed at every point
(``alphas`` points, one batch of 32×32×3 random images for both the statistics and the loss).
Each case is timed in interleaved rounds (``interleaved.timed``, medians of wall-clock and CPU).

Run: PYTHONPATH=$PWD python benchmarks/bench_alignment.py [--quick] [--threads N] [--rounds R]
"""
import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.interleaved import timed  # noqa: E402
from ensembles.models import zoo  # noqa: E402
from landscape.alignment import apply_permutation, match_weights, permutation_spec  # noqa: E402
from landscape.connectivity import loss_barrier  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="width 16 only, 3 alphas, batch 16")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(args.threads)
widths = (16,) if args.quick else (16, 64)
alphas, batch = (3, 16) if args.quick else (5, 64)

generator = torch.Generator().manual_seed(0)
data = [(torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator))]
print(f"threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
      f"load average before {os.getloadavg()[0]:.2f}, rounds {args.rounds}; barrier: {alphas} alphas, "
      f"batch-norm statistics recomputed per point, one batch of {batch} 32x32x3")
print(f"{'width':>5} {'params':>10} {'groups':>6} {'case':26} {'wall s':>8} {'cpu s':>8}  notes")
for width in widths:
    torch.manual_seed(1)
    a = zoo.build("resnet18", 10, width=width)
    torch.manual_seed(2)
    b = zoo.build("resnet18", 10, width=width)
    found = match_weights(a, b)
    spec = permutation_spec(a)
    cases = {
        "weight matching": lambda: match_weights(a, b),
        "apply the permutation": lambda: apply_permutation(b, found.permutation, spec),
        "one loss barrier": lambda: loss_barrier(a, b, F.cross_entropy, data, alphas=alphas, bn_batches=data),
    }
    times = timed(cases, args.rounds, warm_up=False)
    notes = {"weight matching": f"{found.iterations} sweeps, converged={found.converged}"}
    for case, (wall, cpu) in times.items():
        print(f"{width:5d} {zoo.parameter_count(a):10d} {len(spec.sizes):6d} {case:26} {wall:8.3f} {cpu:8.3f}  "
              f"{notes.get(case, '')}")
print(f"load average after {os.getloadavg()[0]:.2f}")
