"""small_cnn's max pooling (ensembles.models.zoo._max_pool_2x2: strided maxima without gradients, a gather at
the channels-last kernel's positions in training) against F.max_pool2d on the contiguous map, in one
epoch of training to a criterion.

Both cases train the same member (a member of :mod:`ensembles.training.trainer` on digits, constant lr,
no augmentation, train loss 0.01 as the criterion, so an epoch is its SGD or SAM steps, the validation
accuracy and the criterion's pass over the training split), in interleaved rounds (``interleaved.py``);
the straightforward case pools with ``F.max_pool2d(x, 2)``, the way small_cnn did before. Also the
criterion's pass alone (evaluation without gradients). The two give the same weights bit for bit
(tests/ensembles/models/test_pooling.py), so only the time differs.

    python benchmarks/bench_pooling.py [--quick] [--threads 1] [--widths 8,16]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits distort timings on a shared machine

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.interleaved import timed  # noqa: E402
from ensembles.models import zoo  # noqa: E402
from ensembles.training.trainer import TrainingSettings, _load_data, _Member, evaluate_loss_and_accuracy  # noqa: E402

FAST = zoo._max_pool_2x2


def straightforward(x: torch.Tensor, training: bool) -> torch.Tensor:
    return F.max_pool2d(x, 2)


def pooling_with(function, work):
    def run():
        zoo._max_pool_2x2 = function
        try:
            work()
        finally:
            zoo._max_pool_2x2 = FAST
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 7")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", default="8,16")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    rounds = 2 if arguments.quick else 7
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{torch.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load} at the start; medians of {rounds} interleaved rounds, CPU seconds "
          "(wall in parentheses)")
    print(f"{'case':<34}{'F.max_pool2d':>20}{'_max_pool_2x2':>20}{'ratio CPU':>11}")
    for width in (int(w) for w in arguments.widths.split(",")):
        for method, rho, batch_size in (("sgd", None, 128), ("sam", 0.1, 32)):
            settings = TrainingSettings(dataset="digits", model="small_cnn", width=width, seeds=(1,), epochs=10_000,
                                        lr=0.02, method=method, rho=rho, batch_size=batch_size, weight_decay=5e-4,
                                        schedule="constant", augmentation="none", until_train_loss=0.01, keep="last")
            data = _load_data(settings)
            members = {name: _Member(0, 1, settings, data.num_classes, torch.device("cpu"))
                       for name in ("plain", "fast")}  # one each: both train the same trajectory
            cases = {
                "epoch plain": pooling_with(straightforward, lambda: members["plain"].train_epoch(data, None)),
                "epoch fast": pooling_with(FAST, lambda: members["fast"].train_epoch(data, None)),
                "check plain": pooling_with(straightforward, lambda: evaluate_loss_and_accuracy(
                    members["plain"].model, data.unaugmented_train, members["plain"].device)),
                "check fast": pooling_with(FAST, lambda: evaluate_loss_and_accuracy(
                    members["fast"].model, data.unaugmented_train, members["fast"].device)),
            }
            times = timed(cases, rounds)
            same = all(torch.equal(a, b) for a, b in zip(members["plain"].model.state_dict().values(),
                                                         members["fast"].model.state_dict().values()))
            for what, label in (("epoch", f"epoch, {method} batch {batch_size}"), ("check", "criterion pass")):
                (plain_wall, plain_cpu), (fast_wall, fast_cpu) = times[f"{what} plain"], times[f"{what} fast"]
                print(f"{f'w{width} {label}':<34}{f'{plain_cpu:.3f} ({plain_wall:.3f})':>20}"
                      f"{f'{fast_cpu:.3f} ({fast_wall:.3f})':>20}{plain_cpu / fast_cpu:>10.2f}x")
            print(f"{'':<34}same weights after {members['fast'].epoch} epochs each: {same}")
    print(f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
