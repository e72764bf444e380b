"""The cost of training to a criterion: the per-epoch check against the epoch it follows.

With ``until_train_loss`` / ``until_train_accuracy`` the trainer adds, after every epoch, one eval-mode
pass without gradients over the whole un-augmented training split
(:func:`ensembles.training.trainer.evaluate_loss_and_accuracy`). This times that pass against one
training epoch of the same member (a member of :mod:`ensembles.training.trainer`: SGD steps, then the
validation accuracy it always computes), in interleaved rounds (``interleaved.py``), on digits with
small_cnn width 8 (``--width``), constant lr, no augmentation, at the training batch sizes given.

    python benchmarks/bench_criterion.py [--quick] [--threads 1] [--batch-sizes 128,32] [--width 8]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits distort timings on a shared machine

import torch  # noqa: E402

from benchmarks.interleaved import timed  # noqa: E402
from ensembles.training.trainer import TrainingSettings, _load_data, _Member, evaluate_loss_and_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="128,32")
    parser.add_argument("--width", type=int, default=8)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    rounds = 3 if arguments.quick else 9
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{torch.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load} at the start; small_cnn width {arguments.width}, medians of {rounds} interleaved rounds")
    print(f"{'batch':>6}{'epoch s':>10}{'check s':>10}{'check/epoch':>13}{'epoch CPU s':>13}{'check CPU s':>13}")
    for batch_size in (int(size) for size in arguments.batch_sizes.split(",")):
        settings = TrainingSettings(dataset="digits", model="small_cnn", width=arguments.width, seeds=(1,), epochs=10_000, lr=0.02,
                                    batch_size=batch_size, weight_decay=0.0, schedule="constant", keep="last")
        data = _load_data(settings)  # digits trains without augmentation: its train split is the one checked
        member = _Member(0, 1, settings, data.num_classes, torch.device("cpu"))
        times = timed({"epoch": lambda: member.train_epoch(data, None),
                       "check": lambda: evaluate_loss_and_accuracy(member.model, data.train, member.device)}, rounds)
        (epoch, epoch_cpu), (check, check_cpu) = times["epoch"], times["check"]
        print(f"{batch_size:>6}{epoch:>10.3f}{check:>10.3f}{check / epoch:>13.3f}{epoch_cpu:>13.3f}{check_cpu:>13.3f}")
    print(f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
