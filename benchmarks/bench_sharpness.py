"""Worst-case sharpness: one vectorized computation over all batches vs a plain loop over batches.

Both run the same APGD ascent (adaptive ℓ2, ρ = 0.5, zero start) on random 32×32×3 inputs:

- ``vectorized``: ``landscape.sharpness.worst_case_sharpness`` (vmap over the stacked batches,
  ``vmap(grad)`` for the ascent gradient);
- ``loop``: the straightforward implementation, one batch after another, writing ``θ + ε`` into the
  model and calling ``torch.autograd.grad`` (what the reference code does, minus its deep copies).

Printed per setting: wall-clock and CPU time per ascent step (all batches), the ratios loop /
vectorized, and the model evaluations per measurement (passes of one batch: forward+backward /
forward only), counted while running. The reference code also evaluates the loss after every step
in a separate forward pass; its count is shown too. Timings are medians over ``--repeats`` runs of
each, interleaved (the machine is shared); ``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise (see
below). The MLP row shows the regime where per-call overhead, not arithmetic, dominates.

    python benchmarks/bench_sharpness.py [--quick]
Measured numbers, with the conditions they were taken under: ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# On a shared, oversubscribed machine OpenMP threads that spin while waiting for each other make
# every op many times slower (benchmarks/README.md); passive waiting removes that artefact, which
# would otherwise flatter the vectorized side. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import landscape.sharpness as sharpness  # noqa: E402
from ensembles.models.zoo import build  # noqa: E402
from landscape.perturbation import PerturbationBall  # noqa: E402

RHO = 0.5


class Counter:
    """Passes of one batch: forward only, and forward+backward."""

    def __init__(self):
        self.forward = 0
        self.forward_backward = 0


def count_vectorized_evaluations(counter: Counter):
    """Wrap the vectorized loss so that every call adds its number of batches to ``counter``."""
    loss_class = sharpness._PerturbedLoss
    original = {name: getattr(loss_class, name) for name in ("clean", "value", "value_and_gradient")}

    def counted(name, field):
        def wrapper(self, *args):
            setattr(counter, field, getattr(counter, field) + args[-2].shape[0])
            return original[name](self, *args)
        return wrapper

    loss_class.clean = counted("clean", "forward")
    loss_class.value = counted("value", "forward")
    loss_class.value_and_gradient = counted("value_and_gradient", "forward_backward")
    return lambda: [setattr(loss_class, name, function) for name, function in original.items()]


def loop_worst_case(model, batches, n_iters, counter: Counter, momentum=0.75):
    """The same APGD, batch after batch, with ordinary autograd on the model's own parameters."""
    model.eval()
    parameters = dict(model.named_parameters())
    center = {name: p.detach().clone() for name, p in parameters.items()}
    ball = PerturbationBall.around(center, RHO, "l2", adaptive=True)
    checkpoints = set(sharpness.apgd_checkpoints(n_iters))

    def evaluate(delta, x, y, gradient=True):
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(center[name] + delta[name][0])
        if not gradient:
            counter.forward += 1
            with torch.no_grad():
                return F.cross_entropy(model(x), y).item(), None
        counter.forward_backward += 1
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(parameters.values()))
        return loss.item(), {name: g[None] for name, g in zip(parameters, grads)}

    increases = []
    try:
        for x, y in batches:
            delta = {name: torch.zeros((1, *v.shape), dtype=v.dtype) for name, v in center.items()}
            previous = delta
            clean, g = evaluate(delta, x, y)
            best, best_delta, best_previous, best_g = clean, delta, previous, g
            step, improvements, halved_last, best_at_checkpoint, last_checkpoint = 2 * RHO, 0, False, best, 0
            for i in range(n_iters):
                z = ball.project({n: delta[n] + s for n, s in ball.ascent_step(g, torch.tensor([step])).items()})
                new = z if i == 0 else ball.project({n: delta[n] + momentum * (z[n] - delta[n])
                                                     + (1 - momentum) * (delta[n] - previous[n]) for n in z})
                previous, delta = delta, new
                last = i == n_iters - 1
                loss, g_new = evaluate(delta, x, y, gradient=not last)
                g = g_new if not last else g
                if loss > best:
                    best, best_delta, best_previous, best_g = loss, delta, previous, g
                    improvements += 1
                if i in checkpoints and not last:
                    stalled = not halved_last and best == best_at_checkpoint
                    halve = improvements < 0.75 * (i - last_checkpoint) or stalled
                    halved_last, best_at_checkpoint, last_checkpoint, improvements = halve, best, i, 0
                    if halve:
                        step /= 2
                        delta, previous, g = best_delta, best_previous, best_g
            increases.append(best - clean)
    finally:
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(center[name])
    return sum(increases) / len(increases)


def shared_weight_passes(model, batches, n_iters):
    """The bound on any vectorization: per ascent step one forward and backward pass of the
    unperturbed model (shared weights, no per-batch copies) over all images at once."""
    model.eval()
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    parameters = list(model.parameters())
    for _ in range(n_iters):
        torch.autograd.grad(F.cross_entropy(model(inputs), targets), parameters)


def timed(function):
    """Wall-clock and process CPU seconds of one call (CPU time is robust to other agents' load
    at one thread; at two it also counts the second thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (how busy the shared machine was)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def warmed_up_case(name, options, m, n_batches):
    """The case's model (seeded) and its random batches, after one warm-up ascent."""
    torch.manual_seed(0)
    model = build(name, 10, **options)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(m, 3, 32, 32, generator=generator), torch.randint(0, 10, (m,), generator=generator))
               for _ in range(n_batches)]
    sharpness.worst_case_sharpness(model, F.cross_entropy, batches[:2], RHO, n_iters=1)
    return model, batches


def compare_chunks(name, options, m, n_batches, chunks, n_iters, repeats):
    """Wall seconds per ascent step of the loop, the default chunking and each chunk size, interleaved."""
    model, batches = warmed_up_case(name, options, m, n_batches)
    variants = {"loop": lambda: loop_worst_case(model, batches, n_iters, Counter()),
                "default": lambda: sharpness.worst_case_sharpness(model, F.cross_entropy, batches, RHO,
                                                                  n_iters=n_iters)}
    for chunk in chunks:
        variants[f"chunk {chunk}"] = (lambda chunk=chunk: sharpness.worst_case_sharpness(
            model, F.cross_entropy, batches, RHO, n_iters=n_iters, chunk_size=chunk))
    runs = {key: [] for key in variants}
    for _ in range(repeats):
        for key, function in variants.items():
            runs[key].append(timed(function)[0] / n_iters)
    shown = ", ".join(f"{key} {statistics.median(value):.3f}" for key, value in runs.items())
    label = name + "".join(f"({key}={value})" for key, value in options.items())
    print(f"{label} m={m} B={n_batches}: s/step {shown}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches and one repeat, a smoke run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--iters", type=int, default=2, help="ascent iterations per measurement (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the machine's cores)")
    parser.add_argument("--only", default=None, help="run only cases whose model, options and m contain this text")
    parser.add_argument("--chunks", default=None,
                        help="instead of the table: time these chunk sizes against the loop and the default "
                             "(comma list, e.g. 1,10,25,100), to choose the default chunking")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    n_iters = arguments.iters
    repeats = arguments.repeats or (1 if arguments.quick else 3)

    cases = [("small_cnn", {}, 5, 100), ("small_cnn", {"width": 16}, 5, 100), ("small_cnn", {}, 128, 8),
             ("resnet18", {"width": 16}, 5, 100), ("resnet18", {"width": 16}, 128, 8),
             ("mlp", {}, 5, 100)]
    if arguments.quick:
        cases = [("small_cnn", {}, 5, 10), ("resnet18", {"width": 16}, 5, 4), ("mlp", {}, 5, 20)]

    if arguments.only:
        cases = [case for case in cases if arguments.only in f"{case[0]} {case[1]} m={case[2]}"]
    print(f"worst-case adaptive l2 sharpness, rho={RHO}, {n_iters} ascent iterations per measurement, "
          f"medians of {repeats} interleaved runs, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load_average()}")
    if arguments.chunks:
        for case in cases:
            compare_chunks(*case, [int(c) for c in arguments.chunks.split(",")], n_iters, repeats)
        print(f"load average after: {load_average()}")
        return
    print("seconds per ascent step (all batches), wall clock [CPU]; ratio = loop / ours; "
          "'all' = one vmapped computation (chunk_size=B), 'one' = chunk_size=1 (no vmap); "
          "'bound' = loop / one shared-weight pass over all images")
    header = (f"{'model':<19}{'m':>4}{'B':>5} | {'loop':>14} | {'all':>14}{'ratio':>12} | {'one':>14}{'ratio':>12} | "
              f"{'bound':>12} | {'evals fwd+bwd/fwd':>18}{'reference code':>15} | {'|diff|':>7}")
    print(header)
    print("-" * len(header))
    for name, options, m, n_batches in cases:
        model, batches = warmed_up_case(name, options, m, n_batches)

        loop_counter, vector_counter = Counter(), Counter()
        runs = {"loop": [], "all": [], "one": [], "bound": []}
        variants = {
            "loop": lambda: loop_worst_case(model, batches, n_iters, loop_counter),
            "all": lambda: sharpness.worst_case_sharpness(model, F.cross_entropy, batches, RHO, n_iters=n_iters,
                                                          chunk_size=n_batches),
            "one": lambda: sharpness.worst_case_sharpness(model, F.cross_entropy, batches, RHO, n_iters=n_iters,
                                                          chunk_size=1),
            "bound": lambda: shared_weight_passes(model, batches, n_iters),
        }
        restore = count_vectorized_evaluations(vector_counter)
        try:
            for _ in range(repeats):  # interleaved, so that all see the same load
                for key, function in variants.items():
                    runs[key].append(timed(function))
        finally:
            restore()
        counts = [(c.forward_backward // repeats, c.forward // repeats) for c in (loop_counter, vector_counter)]
        assert counts[1] == (2 * counts[0][0], 2 * counts[0][1]), counts  # 'all' and 'one' together
        wall = {key: statistics.median(run[0] for run in value) / n_iters for key, value in runs.items()}
        cpu = {key: statistics.median(run[1] for run in value) / n_iters for key, value in runs.items()}
        difference = max(abs(runs["loop"][0][2] - runs[key][0][2].value) for key in ("all", "one"))
        label = name + "".join(f"({key}={value})" for key, value in options.items())

        def cell(key):
            return f"{wall[key]:>6.2f} [{cpu[key]:>5.2f}]"

        def ratio(key):
            return f"{wall['loop'] / wall[key]:>5.2f} [{cpu['loop'] / cpu[key]:>4.2f}]"

        evaluations = f"{counts[0][0]} / {counts[0][1]}"
        reference = f"{n_batches * n_iters} / {n_batches * (n_iters + 1)}"
        print(f"{label:<19}{m:>4}{n_batches:>5} | {cell('loop'):>14} | {cell('all'):>14}{ratio('all'):>12} | "
              f"{cell('one'):>14}{ratio('one'):>12} | {ratio('bound'):>12} | {evaluations:>18}{reference:>15} | "
              f"{difference:>7.1e}",
              flush=True)


if __name__ == "__main__":
    main()
