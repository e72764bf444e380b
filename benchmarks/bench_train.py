"""Training cost: a SAM step against an SGD step, SharpBalance against SAM end to end, and the
single-basin constructions against plain SGD per epoch.

1. ``step``: one :func:`ensembles.methods.sharpbalance.training_step` with ρ = 0 (exactly SGD: one
   forward-backward pass) and with ρ = 0.05 (SAM: two passes), on random 32×32×3 batches of 128,
   for small_cnn and a width-16 CIFAR ResNet-18. Two passes make 2.0 the floor of the ratio; what
   is above it is SAM's own work (the norm, the copy of θ, the climb and the return).
2. ``run``: total wall time of :func:`ensembles.training.trainer.train` for SAM and for SharpBalance (T_d at
   half the epochs, scoring every training sample by per-sample Fisher trace included) on digits
   with small_cnn, and the relative overhead (the paper reports +1% for ResNet-18 on CIFAR-10).
3. ``single-basin``: seconds per epoch (from the training log: the epoch's steps and its validation
   pass) of a constrained member (``connect_strength``: a second, interpolated forward-backward pass
   per step) and of a distilled member (``distill_from``: the KL term against cached teacher logits)
   against a plain SGD member, on digits with small_cnn width 8, batch 128, side by side in one
   process (the three runs interleaved, each round starting with the next case; the teacher's
   logits computed once before the first distilled run, as the cache does).

Medians over ``--repeats`` interleaved runs; the machine is shared, so read the ratios.

    python benchmarks/bench_train.py [--quick] [--threads 1] [--only steps|runs|single-basin]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits distort timings on a shared machine

import torch  # noqa: E402

from ensembles.models.zoo import build  # noqa: E402
from ensembles.methods.sam import SAM  # noqa: E402
from ensembles.methods.sharpbalance import training_step  # noqa: E402
from ensembles.training.trainer import TrainingSettings, read_training_log, train  # noqa: E402


def step_times(model_name: str, width: int, repeats: int, batch_size: int = 128) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build(model_name, 10, width=width)
    inputs, targets = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    optimizers = {rho: SAM(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), rho=rho)
                  for rho in (0.0, 0.05)}
    times = {rho: [] for rho in optimizers}
    for rho, optimizer in optimizers.items():  # warm-up
        training_step(model, optimizer, inputs, targets)
    for _ in range(repeats):
        for rho, optimizer in optimizers.items():
            start = time.perf_counter()
            training_step(model, optimizer, inputs, targets)
            times[rho].append(time.perf_counter() - start)
    return statistics.median(times[0.0]), statistics.median(times[0.05])


def run_times(epochs: int, members: int, repeats: int) -> tuple[float, float]:
    base = TrainingSettings(dataset="digits", model="small_cnn", width=8, method="sam", rho=0.05,
                            seeds=tuple(range(1, members + 1)), epochs=epochs, lr=0.05, batch_size=128)
    sharpbalance = TrainingSettings(**{**base.__dict__, "method": "sharpbalance", "td": epochs // 2, "k": 0.4})
    times = {"sam": [], "sharpbalance": []}
    for _ in range(repeats):
        for name, settings in (("sam", base), ("sharpbalance", sharpbalance)):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                train(os.path.join(folder, "run"), settings)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["sam"]), statistics.median(times["sharpbalance"])


def single_basin_epoch_times(epochs: int, repeats: int) -> dict[str, float]:
    """Median seconds per epoch of a plain SGD member, a constrained member (member 1 of a run with
    connect_strength 1; member 0, the anchor, trains plainly) and a distilled member, interleaved."""
    plain = TrainingSettings(dataset="digits", model="small_cnn", width=8, seeds=(1, 2), epochs=epochs, lr=0.05,
                             batch_size=128, keep="last")
    constrained = TrainingSettings(**{**plain.__dict__, "connect_strength": 1.0})
    seconds = {"plain SGD": [], "constrained": [], "distilled": []}
    with tempfile.TemporaryDirectory() as folder:
        teacher = os.path.join(folder, "teacher")
        train(teacher, TrainingSettings(**{**plain.__dict__, "seeds": (11, 12)}))
        distilled = TrainingSettings(**{**plain.__dict__, "distill_from": teacher})
        cases = [("plain SGD", plain, (0, 1)), ("constrained", constrained, (1,)), ("distilled", distilled, (0, 1))]
        for repeat in range(repeats):
            # each round starts with another case: on a loaded machine the position in a round shows
            for name, settings, members in cases[repeat % 3:] + cases[:repeat % 3]:
                run = os.path.join(folder, f"{name}-{repeat}")
                train(run, settings)
                log = read_training_log(run)
                seconds[name] += log[log["member"].isin(members)]["seconds"].tolist()
                shutil.rmtree(run)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("steps", "runs", "single-basin"), default=None, help="one part only")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    repeats = 3 if arguments.quick else 7

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load}")
    if arguments.only in (None, "steps"):
        print(f"medians of {repeats} interleaved steps")
        print(f"{'model':<22}{'SGD step s':>12}{'SAM step s':>12}{'SAM/SGD':>10}")
        for model_name, width in (("small_cnn", 32), ("resnet18", 16)):
            sgd, sam = step_times(model_name, width, repeats)
            print(f"{model_name + ' w' + str(width):<22}{sgd:>12.4f}{sam:>12.4f}{sam / sgd:>10.3f}")

    if arguments.only in (None, "runs"):
        epochs, members = (4, 2) if arguments.quick else (10, 3)
        sam, sharpbalance = run_times(epochs, members, 1 if arguments.quick else 3)
        print(f"\ndigits, small_cnn w8, {members} members, {epochs} epochs, T_d = {epochs // 2}")
        print(f"{'SAM run s':>12}{'SharpBalance run s':>20}{'overhead':>10}")
        print(f"{sam:>12.2f}{sharpbalance:>20.2f}{100 * (sharpbalance / sam - 1):>9.1f}%")

    if arguments.only in (None, "single-basin"):
        epochs, rounds = (3, 2) if arguments.quick else (5, 3)
        times = single_basin_epoch_times(epochs, rounds)
        print(f"\nsingle-basin training, digits, small_cnn w8, batch 128, {rounds} interleaved rounds of {epochs} "
              f"epochs; median seconds per member epoch (steps and validation)")
        print(f"{'objective':<14}{'s / epoch':>10}{'/ plain SGD':>13}")
        for name, value in times.items():
            print(f"{name:<14}{value:>10.3f}{value / times['plain SGD']:>13.2f}")
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
