"""How far sharpdiv's worst-case ascent (APGD in the ball's own metric) lies from the reference code's.

Every published worst-case sharpness was computed with the ascent of Andriushchenko et al.'s code;
sharpdiv's default ascent is a better maximiser of the same problem, so its values are higher
(most of all for adaptive ℓ2). This script measures the shift on trained models, per model and norm,
with everything else equal (same weights, same batches, same radius, 20 iterations, zero start):

- models: ``small_cnn`` width 16 (~24k parameters) and ``resnet18`` width 16, each one member
  trained with SGD on digits by :func:`ensembles.training.trainer.train` (kept in ``--work`` and
  reused on the next run);
- batches: SharpBalance's measurement batches (``m`` = 5, seed 13, training split,
  :func:`ensembles.studies.measurements.sharpness_batches`), 100 of them for small_cnn and 20 for
  resnet18 (``--n-batches`` overrides both);
- settings: adaptive ℓ2 ρ = 0.5 (SharpBalance's), standard ℓ2 ρ = 0.1, adaptive ℓ∞ ρ = 0.002.

Printed per row: the mean over batches of both ascents (± standard error), their ratio, on how many
batches APGD found the higher value, and the seconds of each. Not a timing benchmark.

    PYTHONPATH=$PWD python benchmarks/bench_ascent.py [--quick] [--models small_cnn,resnet18] [--threads 1] [--seed 13]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see benchmarks/README.md

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ensembles.data.datasets import load_dataset  # noqa: E402
from ensembles.runs.run_folder import RUN_FILE, load_run  # noqa: E402
from ensembles.studies.measurements import sharpness_batches  # noqa: E402
from ensembles.training.trainer import TrainingSettings, train  # noqa: E402
from landscape.sharpness import worst_case_sharpness  # noqa: E402

SETTINGS = (("l2", True, 0.5), ("l2", False, 0.1), ("linf", True, 0.002))
BATCHES = {"small_cnn": 100, "resnet18": 20}


def trained_member(model: str, epochs: int, work: Path, seed: int = 13) -> torch.nn.Module:
    """One SGD member of ``model`` (width 16) trained on digits, trained once and then reused."""
    run = work / f"digits-{model}-w16-e{epochs}" if seed == 13 else work / f"digits-{model}-w16-e{epochs}-s{seed}"
    if not (run / RUN_FILE).exists():
        train(run, TrainingSettings(dataset="digits", model=model, width=16, method="sgd", seeds=(seed,),
                                    epochs=epochs, lr=0.05, batch_size=64))
    return load_run(run).members[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--epochs", type=int, default=10, help="SGD epochs of each member (default 10)")
    parser.add_argument("--n-batches", type=int, default=None, help="batches of 5 (default 100 small_cnn, 20 resnet18)")
    parser.add_argument("--n-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sharpdiv-bench-ascent",
                        help="where the trained members are kept")
    parser.add_argument("--seed", type=int, default=13,
                        help="the member's training seed (default 13): members of other seeds give the ratio's spread")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 4 batches, 5 iterations: a smoke run")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    epochs, n_iters = (2, 5) if arguments.quick else (arguments.epochs, arguments.n_iters)
    images = load_dataset("digits", split="train")
    print(f"worst-case sharpness, sharpdiv's APGD vs the reference code's ascent; {n_iters} iterations, zero start, "
          f"m = 5, batch seed 13, digits train; members: SGD, {epochs} epochs, seed {arguments.seed}; {torch.get_num_threads()} threads")
    header = (f"{'model':<21}{'setting':<22}{'B':>4} | {'apgd':>16}{'reference':>16}{'ratio':>7}"
              f"{'apgd higher':>13} | {'seconds':>12}")
    print(header)
    print("-" * len(header))
    for model_name in arguments.models.split(","):
        model = trained_member(model_name, epochs, arguments.work, arguments.seed)
        n_batches = 4 if arguments.quick else arguments.n_batches or BATCHES.get(model_name, 20)
        batches = sharpness_batches(images, 5, n_batches, 13)
        for norm, adaptive, rho in SETTINGS:
            results, seconds = {}, {}
            for ascent in ("apgd", "reference"):
                start = time.perf_counter()
                results[ascent] = worst_case_sharpness(model, F.cross_entropy, batches, rho, norm, adaptive,
                                                       n_iters=n_iters, reference_ascent=ascent == "reference")
                seconds[ascent] = time.perf_counter() - start
            apgd, reference = results["apgd"], results["reference"]
            higher = int((apgd.per_batch > reference.per_batch).sum())
            setting = f"{norm} {'adaptive' if adaptive else 'standard'} ρ={rho:g}"
            print(f"{model_name + '(width=16)':<21}{setting:<22}{n_batches:>4} | "
                  f"{apgd.value:>8.4g} ± {apgd.stderr:<5.2g}{reference.value:>8.4g} ± {reference.stderr:<5.2g}"
                  f"{apgd.value / reference.value:>7.3f}{f'{higher}/{n_batches}':>13} | "
                  f"{seconds['apgd']:>5.0f} {seconds['reference']:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
