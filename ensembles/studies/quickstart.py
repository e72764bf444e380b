"""The quickstart: a small, complete SharpBalance study on scikit-learn's digits, on a CPU.

``sharpdiv quickstart`` runs this recipe as a sweep (:mod:`ensembles.studies.sweep`), so a second run on the
same folder reuses everything, and an interrupted one continues where it stopped:

1. write digits-C, the corrupted test split (:func:`ensembles.data.corruptions.write_corrupted_dataset`,
   with :data:`ensembles.data.corruptions.DIGITS_PARAMETERS`), into ``DIR/data``;
2. train 3-member ensembles of ``small_cnn`` (width 16, 12 epochs, batches of 32, lr 0.05 cosine,
   no augmentation) with SGD, with SAM at each radius of a small ρ sweep (three radii, so the SAM
   group has enough ensembles for a fitted β), and with SharpBalance (paper variant, k = 0.4, T_d at
   half the epochs), into ``DIR/runs``;
3. measure each member's adaptive worst-case ℓ2 sharpness at ρ = 0.1 and 0.2 (the report uses 0.1,
   :data:`SHARPNESS`) and its Hessian trace, then evaluate every metric on the validation and test
   data and on every corruption at every severity.

The report (``DIR/report``) is written by the CLI with :mod:`reports`, grouped by method.

Recipe, measured on this project's 2-core CPU (numbers in the README). With width 8, 8 epochs and
CIFAR's crop-and-flip the members reached 65-76% clean test accuracy, still rising; without the
augmentation (a mirrored digit is another glyph, a 4-pixel crop moves an 8x8 glyph by a whole
source pixel) 91-94%; width 16 and 12 epochs give 96-98%, with the validation accuracy level over the last epochs. Digits' default
augmentation is therefore ``none`` (:func:`ensembles.data.datasets.default_augmentation`). At ρ = 0.5 the
worst-case perturbation costs these members 70-90 points of training accuracy (saturated, a uniform
guess errs 90%); at ρ = 0.1 a few points.

Budget. On a CPU the cost of an epoch of the small CNN is mostly per-step overhead: one torch thread
per process does as much as two, so the ensembles train in parallel, one single-threaded process
per usable core (:func:`parallelism`; ``--jobs``/``--threads`` override). The numbers depend on the
thread count, never on the number of jobs. The README records the measured time of the whole run.
``fast=True`` is the test suite's version: 2 radii, 2 members, 2 epochs with T_d = 1, 3 corruptions
(severities 1, 3 and 5 evaluated), the first 512 training images, and small measurement budgets.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ensembles.studies.sweep import Sweep, SweepResult, parse_sweep, run_sweep, sweep_runs

__all__ = ["QuickstartResult", "RECIPES", "parallelism", "quickstart_sweep", "run_quickstart"]

DATA_DIR = "data"
RUNS_DIR = "runs"
REPORT_DIR = "report"
#: The sharpness the report and the summary use: at ρ = 0.1 well-trained digits members lose a few
#: points of training accuracy in the worst case; at ρ = 0.5 (the CIFAR default) they lose 70-90 points,
#: near a uniform guess's 90% error, so every member measured the same saturated value.
SHARPNESS = "sharpness/worst/l2/adaptive@0.1"


@dataclass(frozen=True)
class _Recipe:
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    td: int
    width: int
    batch_size: int
    lr: float
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    sharpness_rhos: tuple[float, ...]
    sharpness_batches: int
    sharpness_iterations: int
    hessian_examples: int
    hessian_probes: int
    train_samples: int | None = None


#: The full recipe and the test suite's ``fast`` one.
RECIPES = {
    "full": _Recipe(rhos=(0.02, 0.05, 0.1), seeds=(13, 17, 27), epochs=12, td=6, width=16, batch_size=32, lr=0.05,
                    corruptions=("gaussian_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
                                 "fog", "contrast", "pixelate"), severities=(1, 2, 3, 4, 5),
                    sharpness_rhos=(0.1, 0.2), sharpness_batches=20, sharpness_iterations=10, hessian_examples=256, hessian_probes=10),
    "fast": _Recipe(rhos=(0.05, 0.1), seeds=(13, 17), epochs=2, td=1, width=8, batch_size=128, lr=0.05,
                    corruptions=("gaussian_noise", "contrast", "pixelate"), severities=(1, 3, 5),
                    sharpness_rhos=(0.1,), sharpness_batches=4, sharpness_iterations=3, hessian_examples=64, hessian_probes=2,
                    train_samples=512),
}


def _recipe_text(recipe: _Recipe, name: str) -> str:
    """The recipe as a sweep file, the same format a user writes (examples/)."""
    def listed(values):
        return "[" + ", ".join(repr(v) for v in values) + "]"

    subset = "" if recipe.train_samples is None else f"train_samples = {recipe.train_samples}\n"
    return f"""
name = "quickstart-{name}"

[base]
dataset = "digits"
model = "small_cnn"
width = {recipe.width}
seeds = {listed(recipe.seeds)}
epochs = {recipe.epochs}
td = {recipe.td}
k = 0.4
batch_size = {recipe.batch_size}
lr = {recipe.lr}
schedule = "cosine"
{subset}
[grid]
method = ["sgd", "sam", "sharpbalance"]
rho = {listed(recipe.rhos)}

[[measure.sharpness]]
kind = "worst"
norm = "l2"
adaptive = true
rho = {listed(recipe.sharpness_rhos)}
m = 5
n_batches = {recipe.sharpness_batches}
n_iters = {recipe.sharpness_iterations}

[measure.hessian]
trace = true
n_examples = {recipe.hessian_examples}
n_probes = {recipe.hessian_probes}

[measure.evaluate]
corruptions = {listed(recipe.corruptions)}
severities = {listed(recipe.severities)}

[report]
group_by = "method"
sharpness = "{SHARPNESS}"
"""


def quickstart_sweep(fast: bool = False) -> Sweep:
    """The quickstart's sweep: SGD, SAM at each radius, and SharpBalance at the middle radius.

    SharpBalance is trained at one radius only (the sweep's rho axis crosses every method, so the
    other SharpBalance points are dropped here) to keep the CPU budget.
    """
    recipe = RECIPES["fast" if fast else "full"]
    sweep = parse_sweep(_recipe_text(recipe, "fast" if fast else "full"), source="the quickstart recipe")
    middle = recipe.rhos[len(recipe.rhos) // 2]
    jobs = tuple(job for job in sweep.jobs if job.settings.method != "sharpbalance" or job.settings.rho == middle)
    from dataclasses import replace

    return replace(sweep, jobs=jobs)


@dataclass(frozen=True)
class QuickstartResult:
    """What :func:`run_quickstart` did: the run folders, the sweep's result, the corruptions written
    now and kept, and the seconds of each stage (``corrupt``, ``sweep``)."""

    out: Path
    runs: tuple[Path, ...]
    sweep: SweepResult
    corruptions_written: tuple[str, ...]
    corruptions_kept: tuple[str, ...]
    seconds: dict

    @property
    def data_path(self) -> Path:
        return self.out / DATA_DIR

    @property
    def report_path(self) -> Path:
        return self.out / REPORT_DIR


def parallelism(jobs: int | None, threads: int | None, device: str, count: int) -> tuple[int, int | None]:
    """``(jobs, threads)`` for ``count`` sweep jobs: what is given, the rest chosen so that busy threads
    never outnumber the usable cores. On a CPU, small models gain nothing from several threads (a
    step is mostly per-operation overhead, and idle OpenMP threads spin), so by default every core
    runs one job with one thread; on a GPU one job at a time, torch's thread choice."""
    from ensembles import cpus
    from landscape.checks import positive_int

    positive_int("--jobs", jobs, optional=True)
    positive_int("--threads", threads, optional=True)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return jobs or 1, threads
    cores = cpus.usable_cpus()
    if jobs is None:
        jobs = max(1, min(count, cores // (threads or 1)))
    return jobs, threads or max(1, cores // jobs)


@contextmanager
def _passive_openmp():
    """OpenMP threads that sleep when idle in the job processes (they inherit the environment)."""
    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


@contextmanager
def _torch_threads(threads: int | None):
    """This process's torch thread count set to ``threads`` (None: unchanged), restored on exit."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_quickstart(out: str | os.PathLike, *, fast: bool = False, device: str = "auto", progress: bool = False,
                   echo: Callable[[str], None] | None = None, jobs: int | None = None,
                   threads: int | None = None) -> QuickstartResult:
    """Write digits-C into ``out/data`` and run :func:`quickstart_sweep` into ``out/runs``.

    ``jobs`` ensembles train at once, each in its own process with ``threads`` torch threads
    (:func:`parallelism`: by default one single-threaded process per usable core on a CPU). The
    numbers depend on ``threads`` (how CPU kernels split their sums), never on ``jobs``.
    Everything already in ``out`` is reused. The report is the CLI's to write
    (``ensembles`` does not depend on ``reports``): over ``result.runs``, grouped by method.
    """
    from ensembles.data.corruptions import write_corrupted_dataset

    out = Path(out)
    say = echo or (lambda message: None)
    recipe = RECIPES["fast" if fast else "full"]
    sweep = quickstart_sweep(fast)
    seconds = {}
    clock = time.perf_counter()
    say(f"writing digits-C ({len(recipe.corruptions)} corruptions x 5 severities) into {out / DATA_DIR}")
    _, written, kept = write_corrupted_dataset("digits", None, out / DATA_DIR, recipe.corruptions,
                                               progress=progress)
    seconds["corrupt"] = time.perf_counter() - clock
    clock = time.perf_counter()
    jobs, threads = parallelism(jobs, threads, device, len(sweep.jobs))
    shown = "torch's default" if threads is None else threads
    say(f"training and measuring {len(sweep.jobs)} ensembles of {len(recipe.seeds)} members into {out / RUNS_DIR} "
        f"({jobs} at once, {shown} thread{'' if threads == 1 else 's'} each)")
    with _passive_openmp(), _torch_threads(threads if jobs == 1 else None):
        result = run_sweep(sweep, out / RUNS_DIR, executor="local", jobs=jobs, retries=0,
                           data_path=str(out / DATA_DIR), device=device, progress=progress, echo=say, threads=threads)
    seconds["sweep"] = time.perf_counter() - clock
    if result.failures:
        from landscape.errors import InputError

        name, error = next(iter(result.failures.items()))
        raise InputError(f"the quickstart's job {name} failed ({error}); run it again to retry the missing work")
    return QuickstartResult(out=out, runs=tuple(sweep_runs(sweep, out / RUNS_DIR)), sweep=result,
                            corruptions_written=tuple(written), corruptions_kept=tuple(kept), seconds=seconds)
