"""Training ensembles: deep ensembles (SGD), SAM, ASAM and SharpBalance, resumable.

Every member is trained from its own seed with SGD (lr 0.1, momentum 0.9, weight decay 5e-4,
batch 128, 200 epochs, ×0.1 at 50% and 75% of the epochs or cosine; SharpBalance, Lu et al.,
NeurIPS 2024, App. D.3), wrapped in
:class:`ensembles.methods.sam.SAM` for ``sam`` (ρ-ball), ``asam`` (adaptive) and ``sharpbalance``. For
SharpBalance (:mod:`ensembles.methods.sharpbalance`) all members train with SAM until epoch T_d, then
each scores every training sample by per-sample Fisher trace, the sets are selected from all
members' scores, and every member continues on its mixed objective (new sets every
``reselect_every`` epochs when asked).

To a criterion (``until_train_loss`` and/or ``until_train_accuracy``; not SharpBalance): after every
epoch each member's mean cross-entropy and accuracy on the whole training split, without
augmentation and in eval mode (BatchNorm's running statistics), are logged
(``train_eval_loss``, ``train_eval_accuracy``), and a member that meets the criterion (both, when
both are given) stops there while the others continue, as generalization-measure studies stop
every model at the same training cross-entropy (Jiang et al., "Fantastic Generalization Measures
and Where to Find Them", ICLR 2020). ``epochs`` is the cap: a
member that reaches it without meeting the criterion is kept (status ``done``) and recorded as
``reached_criterion: false``. The kept weights are the stopping epoch's (``keep="last"``); the
learning-rate schedules ``multistep`` and ``cosine`` are defined over the cap; ``constant`` (a fixed
lr) suits an open-ended run.

Members advance in lockstep **phases** separated by the selection epochs: every member trains
to the end of a phase, then all score, then all continue. In one process (the default) members
take turns within a phase; with ``members_parallel=N``, ``N`` processes (torch.distributed,
gloo on CPU; NCCL with one GPU per process, unverified here) each train members ``r, r+N, ...``
and exchange their scores with ``all_gather``.

Single-basin ensembles (Lion et al., "How good is a single basin?", AISTATS 2024; the run-folder
records are :mod:`ensembles.training.single_basin`'s) are built inside one run folder, member 0 being
the parent or the anchor:

- ``spawn_epoch = T``: member 0 trains alone for T epochs; its complete training state (weights and
  buffers, optimizer state with momentum, epoch and so the schedule's position, best weights, pruning
  masks) becomes the parent, and members 1..M-1 continue from it with their own data-order and
  augmentation generators (from their own seeds). T = 0 is a shared initialization. With
  ``keep = best`` a spawned member whose validation accuracy never beats the parent's keeps the
  parent's best weights: read the kept epoch in run.json.
- ``connect_strength = λ``: member 0, the anchor, trains plainly to the end first; members 1..M-1
  then train from their own initialization (from the parent, when spawned) on
  :func:`ensembles.methods.connected.constrained_loss` against the anchor's kept weights, α drawn per
  step from a generator of their own. λ = 0 is plain training: nothing is computed or drawn.
- ``distill_from``: every member trains on :func:`ensembles.methods.distillation.distillation_loss`
  against its teacher member (or the teacher ensemble), from the spawn epoch on when spawning (the
  parent phase is plain training, so spawned and distilled runs with the same first seed and T share
  one parent). The teacher's logits on the whole training split come from its logit cache, computed
  once; an augmented image's target is the teacher's prediction on the image before augmentation.

Members advance in lockstep **phases** separated by the selection epochs (and the spawn epoch):
every member trains to the end of a phase, then all score, then all continue. In one process (the
default) members take turns within a phase; with ``members_parallel=N``, ``N`` processes
(torch.distributed, gloo on CPU; NCCL with one GPU per process, unverified here) each train members
``r, r+N, ...`` and exchange their scores with ``all_gather`` (and wait at a barrier for a parent or
an anchor written by the process training member 0).

Randomness is per member and never global: the initialization comes from ``torch.manual_seed(seed)``
inside a forked RNG (as the released code seeds each member), the data order from a
``torch.Generator`` and the augmentation's crops and flips from another, passed to
:func:`ensembles.data.datasets.batches`; an epoch draws nothing from torch's global RNG (the
models the trainer builds have no dropout).
So with the same seeds and thread count both modes give identical weights, and so does a run
killed at any moment and resumed: run.json records the torch thread count and the device the run
was trained with, and :func:`resume` trains with that thread count again unless told otherwise.

The run folder (:mod:`ensembles.runs.run_folder`): ``run.json`` holds every hyper-parameter flat, and the
torch thread count (``threads``) and device (``device``) of the training;
``member-<i>.safetensors`` the best-on-validation weights (``keep="last"``: the final ones), and
with a criterion each member's ``stop_epoch`` and ``reached_criterion`` in its run.json entry;
``train/parent.pt`` the parent of spawned members;
``train/`` the state to resume from, rewritten atomically after every epoch of every member
(``member-<i>.pt``: weights, optimizer state, epoch, both generators, best weights and
accuracy, pruning masks, whether the criterion stopped it, log), the SharpBalance sets
(``sets-epoch-<b>.pt``) and per-epoch logs as JSON lines (``log-member-<i>.jsonl``: epoch, member,
train_loss, train_accuracy, val_accuracy, lr, seconds; with a criterion train_eval_loss and
train_eval_accuracy), and ``settings.json``, the settings that state belongs to (a ``train/``
of other settings is refused, never continued). :func:`train` writes only into a new, empty or
sharpdiv-made folder (:func:`ensembles.runs.files.require_writable_folder`) and checks every input
before its first write. A member whose loss or weights go non-finite stops training, gets no
weights file and is marked ``failed`` in run.json with its ``diverged_epoch``; the training then
ends with an InputError naming it.
"""
from __future__ import annotations

import copy
import datetime
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ensembles.models import pruning, zoo
from ensembles.models.inputs import normalizes
from ensembles.data.datasets import ImageDataset, batches, load_dataset
from ensembles.runs.files import RUN_FILE, atomic_path, mark_folder, require_writable_folder, write_json
from ensembles.runs.run_folder import (TRAIN_DIR, check_member_model, create_run, legacy_asam_scale, member_path,
                                       read_config, save_member)
from ensembles.methods.connected import constrained_loss
from ensembles.methods.distillation import distillation_loss, ensemble_soft_targets, soft_targets
from ensembles.methods.sam import SAM, asam_scaled_parameters
from ensembles.methods.sharpbalance import select_sets, training_step
from ensembles.training import single_basin
from ensembles.training.settings import METHODS, SCHEDULES, TrainingSettings, criterion_text, has_criterion
from landscape._checks import evaluation_mode, positive_int
from landscape.errors import InputError

__all__ = [
    "METHODS",
    "SCHEDULES",
    "TrainingSettings",
    "MemberSummary",
    "evaluate_loss_and_accuracy",
    "learning_rate",
    "missed_criterion",
    "selection_epochs",
    "train",
    "resume",
    "read_training_log",
]

#: Multistep decay: ×0.1 at these fractions of the epochs (100 and 150 of 200).
MILESTONE_FRACTIONS = (0.5, 0.75)
DECAY = 0.1
#: The augmentation of every run made before it was a setting (run.json without ``augmentation``).
LEGACY_AUGMENTATION = "crop-flip"


def legacy_augmentation(record: dict) -> dict:
    """``{"augmentation": ...}`` for a run.json or settings.json written before the setting: the
    boolean ``augment`` of a while (true: crop-flip), else crop-flip, as every run was then trained."""
    if record.get("augmentation") is not None:
        return {}
    if "augment" in record:
        return {"augmentation": "crop-flip" if record["augment"] else "none"}
    return {"augmentation": LEGACY_AUGMENTATION}


#: train/settings.json: the settings the training state in train/ belongs to.
SETTINGS_FILE = "settings.json"


def learning_rate(settings: TrainingSettings, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: multistep ``lr · 0.1^{#milestones ≤ epoch}`` with
    milestones ``⌊0.5 E⌋, ⌊0.75 E⌋``, cosine ``lr · (1 + cos(π epoch / E)) / 2``, or constant ``lr``
    (E = ``epochs``, the cap of a run to a criterion)."""
    if settings.schedule == "constant":
        return settings.lr
    if settings.schedule == "cosine":
        return settings.lr * (1 + math.cos(math.pi * epoch / settings.epochs)) / 2
    milestones = [int(settings.epochs * fraction) for fraction in MILESTONE_FRACTIONS]
    return settings.lr * DECAY ** sum(epoch >= milestone for milestone in milestones)


def selection_epochs(settings: TrainingSettings) -> list[int]:
    """Epochs after which SharpBalance (re)selects the sets: T_d, then every ``reselect_every``."""
    if settings.method != "sharpbalance":
        return []
    if not settings.reselect_every:
        return [settings.td]
    return list(range(settings.td, settings.epochs, settings.reselect_every))


# ----------------------------------------------------------------------------------------------
# one member


def _stream_seeds(seed: int) -> tuple[int, int]:
    """Two independent seeds (data order, augmentation) derived from a member's seed."""
    order, augmentation = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(order), int(augmentation)


def _interpolation_seed(seed: int) -> int:
    """The seed of a member's α stream (the connectivity constraint), independent of the other two."""
    return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, dtype=np.uint64)[0])


class _Member:
    """A member in training: model, optimizer, its random streams, best weights and log."""

    def __init__(self, index: int, seed: int, settings: TrainingSettings, num_classes: int, device: torch.device):
        self.index, self.seed, self.settings, self.device = index, seed, settings, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = zoo.build(settings.model, num_classes, model_input=settings.model_input,
                                   **_model_args(settings))
        self.model.to(device)
        base = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
        rho = settings.rho if settings.sharpness_aware else 0.0
        if settings.method == "asam":
            self.optimizer = SAM(base, rho=rho, adaptive=True, eta=settings.eta,
                                 scaled=asam_scaled_parameters(self.model, settings.asam_scale))
        else:
            self.optimizer = SAM(base, rho=rho)
        order_seed, augmentation_seed = _stream_seeds(seed)
        self.order = torch.Generator().manual_seed(order_seed)
        self.augmentation = torch.Generator().manual_seed(augmentation_seed)
        # α of the connectivity constraint; none is drawn (nor stored) without the constraint
        self.interpolation = (torch.Generator().manual_seed(_interpolation_seed(seed))
                              if settings.connect_strength else None)
        self.teacher = None  # (N, C) soft targets of this member's teacher on the training split
        self.anchor = None  # the anchor's parameters, for the connectivity constraint
        self.epoch = 0
        self.best_state = None
        self.best_accuracy = -1.0
        self.best_epoch = -1
        self.diverged_epoch = None  # the first epoch that ended with a non-finite loss or weights
        self.reached_criterion = None  # with a criterion: True once met, False at the cap without it
        self.log: list[dict] = []
        self.masks = None
        self._hooks = []

    # -- checkpoint

    def checkpoint_path(self, run_path: Path) -> Path:
        return run_path / TRAIN_DIR / f"member-{self.index}.pt"

    def state(self) -> dict:
        state = {
            "epoch": self.epoch, "seed": self.seed,
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "order": self.order.get_state(), "augmentation": self.augmentation.get_state(),
            "best": self.best_state, "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
            "diverged_epoch": self.diverged_epoch, "reached_criterion": self.reached_criterion,
            "masks": None if self.masks is None else _to_cpu(self.masks),
            "log": self.log,
        }
        if self.interpolation is not None:
            state["interpolation"] = self.interpolation.get_state()
        return state

    def save(self, run_path: Path) -> None:
        _save_atomically(self.state(), self.checkpoint_path(run_path))
        lines = "".join(json.dumps(row) + "\n" for row in self.log)
        with atomic_path(run_path / TRAIN_DIR / f"log-member-{self.index}.jsonl") as temporary:
            temporary.write_text(lines)

    def load(self, run_path: Path) -> bool:
        """Restore from train/ if this member has a checkpoint; True when it did."""
        path = self.checkpoint_path(run_path)
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated file cannot come from our atomic writes
            raise InputError(f"cannot read {path} ({error}); the run's training state is damaged — "
                             "remove the member's file to retrain it from scratch") from None
        if state["seed"] != self.seed:
            raise InputError(f"{path} belongs to seed {state['seed']}, not {self.seed}; the run folder was altered")
        self._continue_from(state)
        self.order.set_state(state["order"])
        self.augmentation.set_state(state["augmentation"])
        if self.interpolation is not None:
            self.interpolation.set_state(state["interpolation"])
        self.diverged_epoch = state.get("diverged_epoch")  # absent in older checkpoints
        self.reached_criterion = state.get("reached_criterion")
        self.log = list(state["log"])
        return True

    def _continue_from(self, state: dict) -> None:
        """Take the training state's weights and buffers, optimizer state (momentum), epoch (the
        schedule's position), best weights and pruning masks."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.best_state, self.best_accuracy, self.best_epoch = state["best"], state["best_accuracy"], state["best_epoch"]
        if state["masks"] is not None:
            self._set_masks({name: mask.to(self.device) for name, mask in state["masks"].items()})

    def spawn_from(self, parent: dict) -> None:
        """Continue from the parent's complete training state (member 0's at the spawn epoch), with
        this member's own data-order, augmentation and α generators, from its seed; its log starts
        at the spawn epoch."""
        self._continue_from(copy.deepcopy(parent))

    # -- pruning

    def _set_masks(self, masks: dict) -> None:
        self.masks = masks
        for handle in self._hooks:
            handle.remove()
        self._hooks = pruning.mask_gradients(self.model, masks)
        pruning.apply_masks(self.model, masks)

    def prune(self) -> None:
        """Global magnitude pruning to the target sparsity; momentum of pruned weights cleared."""
        self._set_masks(pruning.global_magnitude_masks(self.model, self.settings.sparsity))
        parameters = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            buffer = self.optimizer.base_optimizer.state.get(parameters[name], {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(mask)

    # -- one epoch

    def train_epoch(self, data: "_Data", sets: torch.Tensor | None) -> dict:
        settings = self.settings
        if settings.sparsity and self.masks is None and self.epoch >= settings.prune_epoch:
            self.prune()
        rate = learning_rate(settings, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        started = time.perf_counter()
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        membership = None if sets is None else sets[self.index].to(self.device)
        for inputs, targets, index in batches(data.train, settings.batch_size, shuffle=True, generator=self.order,
                                              with_index=True, device=self.device,
                                              augmentation_generator=self.augmentation):
            in_sam_set = None if membership is None else membership[index]
            outcome = training_step(self.model, self.optimizer, inputs, targets, in_sam_set,
                                    loss_fn=self.objective(inputs, index),
                                    freeze_batch_norm=not settings.reference_compatible)
            if self.masks is not None:
                pruning.apply_masks(self.model, self.masks)
            loss_sum += outcome.loss * len(targets)
            correct += outcome.correct
            seen += len(targets)
        val_accuracy = accuracy(self.model, data.val, self.device)
        self.epoch += 1
        if self.diverged_epoch is None and not (math.isfinite(float(loss_sum)) and _finite_weights(self.model)):
            self.diverged_epoch = self.epoch
        if val_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = val_accuracy, self.epoch
            self.best_state = _to_cpu(self.model.state_dict(), clone=True)
        row = {"epoch": self.epoch, "member": self.index, "seed": self.seed,
               "train_loss": float(loss_sum) / seen, "train_accuracy": int(correct) / seen,
               "val_accuracy": val_accuracy, "lr": rate, "sharpbalance_sets": sets is not None}
        if has_criterion(settings) and self.diverged_epoch is None:
            row.update(self.check_criterion(data.unaugmented_train))
        row["seconds"] = time.perf_counter() - started
        self.log.append(row)
        return row

    def objective(self, inputs: torch.Tensor, index: torch.Tensor) -> Callable:
        """The batch's loss ``L(outputs, targets)``: the cross-entropy; Hinton et al.'s distillation
        loss against this member's teacher (from the spawn epoch on when spawning); or the
        connectivity constraint to the anchor, with α drawn now from this member's generator."""
        settings = self.settings
        if self.teacher is not None and self.epoch >= (settings.spawn_epoch or 0):
            teacher = self.teacher[index]
            return lambda outputs, targets: distillation_loss(outputs, targets, teacher, settings.distill_weight,
                                                              settings.distill_temperature)
        if self.anchor is not None:
            alpha = float(torch.rand((), generator=self.interpolation))
            return lambda outputs, targets: constrained_loss(outputs, targets, self.model, self.anchor, inputs,
                                                             settings.connect_strength, alpha)
        return F.cross_entropy

    # -- training to a criterion

    def check_criterion(self, dataset) -> dict:
        """The eval-mode loss and accuracy on the un-augmented training split after this epoch, and
        whether the member stops here: it met the criterion (``reached_criterion`` True), or it is
        at the cap without it (False)."""
        settings = self.settings
        loss, correct = evaluate_loss_and_accuracy(self.model, dataset, self.device)
        met = ((settings.until_train_loss is None or loss <= settings.until_train_loss)
               and (settings.until_train_accuracy is None or correct >= settings.until_train_accuracy))
        if met:
            self.reached_criterion = True
        elif self.epoch >= settings.epochs:
            self.reached_criterion = False
        return {"train_eval_loss": loss, "train_eval_accuracy": correct}

    @property
    def stopped(self) -> bool:
        """Whether the criterion stopped this member before the cap."""
        return self.reached_criterion is True

    def finished(self) -> bool:
        """Trained to the end: the criterion met, or the cap reached."""
        return self.stopped or self.epoch >= self.settings.epochs

    def scores(self, data: "_Data") -> torch.Tensor:
        """Per-sample Fisher trace of every training sample (eval mode, no augmentation)."""
        from landscape.fisher import per_sample_fisher_trace

        return per_sample_fisher_trace(self.model, F.cross_entropy,
                                       batches(data.scoring, 512, device=self.device),
                                       chunk_size=self.settings.score_chunk_size)

    def kept_weights(self) -> dict:
        if self.settings.keep == "best" and self.best_state is not None:
            return self.best_state
        return _to_cpu(self.model.state_dict())


def _save_atomically(state: dict, target: Path) -> None:
    """``torch.save`` to ``target`` whole or not at all. Serialized in memory first: torch's zip
    writer reports a full disk or a file-size limit without its cause, Python's write names both."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(target) as temporary:
        temporary.write_bytes(buffer.getbuffer())


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in model.state_dict().values()
               if tensor.is_floating_point())


def _model_args(settings: TrainingSettings) -> dict:
    extra = dict(settings.model_args or {})
    if settings.width is not None and "width" in extra:
        raise InputError(f"the width is given twice (--width {settings.width} and --model-arg width={extra['width']}); "
                         "give it once")
    return extra if settings.width is None else {**extra, "width": settings.width}


def _to_cpu(value, clone: bool = False):
    if isinstance(value, torch.Tensor):
        moved = value.detach().to("cpu")
        # .to("cpu") returns the same storage on the CPU: a kept state must not follow the live weights
        return moved.clone() if clone and moved.data_ptr() == value.data_ptr() else moved
    if isinstance(value, dict):
        return {key: _to_cpu(item, clone) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item, clone) for item in value]
    return value


@torch.no_grad()
def evaluate_loss_and_accuracy(model: torch.nn.Module, dataset, device: torch.device,
                               batch_size: int = 64) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over the whole ``dataset`` in eval mode, one batched
    pass without gradients (the model's mode is restored). Batches of 64: on a CPU larger ones ran
    up to twice as slow per image for a width-32 small_cnn (benchmarks/README.md, bench_criterion)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with evaluation_mode(model):
        for inputs, targets in batches(dataset, batch_size, device=device):
            logits = model(inputs)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
            correct += (logits.argmax(1) == targets).sum()
    return float(loss_sum) / len(dataset), int(correct) / len(dataset)


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode (the model's mode is restored)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with evaluation_mode(model):
        for inputs, targets in batches(dataset, batch_size, device=device):
            correct += (model(inputs).argmax(1) == targets).sum()
    return int(correct) / len(dataset)


@dataclass
class _Data:
    train: object
    val: object
    scoring: object | None
    num_classes: int
    unaugmented_train: object | None = None  # what a criterion is checked on


def first_samples(dataset: ImageDataset, count: int | None) -> ImageDataset:
    """The first ``count`` samples of ``dataset`` (all of them for None), same settings."""
    if count is None or count >= len(dataset):
        return dataset
    images = dataset.array[:count] if dataset.array is not None else dataset.paths[:count]
    return ImageDataset(images, dataset.targets[:count], name=dataset.name, split=dataset.split,
                        num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std, classes=dataset.classes,
                        augment=dataset.augmentation, normalize=dataset.normalize, image_size=dataset.image_size)


def _load_data(settings: TrainingSettings) -> _Data:
    def split(name, augment="none"):
        # [0, 1] pixels for a model that normalises its inputs itself: normalised exactly once
        return load_dataset(settings.dataset, settings.data_path, name, augment=augment,
                            normalize=not normalizes(settings.model_input))

    train = first_samples(split("train", augment=settings.augmentation), settings.train_samples)
    val = split("val")
    scoring = (first_samples(split("train"), settings.train_samples)
               if settings.method == "sharpbalance" else None)
    unaugmented = None
    if has_criterion(settings):
        unaugmented = train if train.augmentation == "none" else first_samples(split("train"), settings.train_samples)
    return _Data(train=train, val=val, scoring=scoring, num_classes=train.num_classes, unaugmented_train=unaugmented)


# ----------------------------------------------------------------------------------------------
# lockstep phases, in one process or many


class _Gang:
    """How the members of this process reach the others: alone, or through torch.distributed."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def own(self, count: int) -> list[int]:
        return list(range(self.rank, count, self.world))

    def barrier(self) -> None:
        """Wait until every process is here (a parent or an anchor written by process 0)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_scores(self, local: dict[int, torch.Tensor], count: int) -> torch.Tensor:
        """All members' scores ``(M, N)`` from each process's own members' rows."""
        if self.world == 1:
            return torch.stack([local[i] for i in range(count)])
        import torch.distributed as dist

        slots = -(-count // self.world)
        sample = next(iter(local.values()))
        mine = torch.zeros((slots, len(sample)), dtype=sample.dtype, device=sample.device)
        for i, scores in local.items():
            mine[i // self.world] = scores
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        return torch.stack([gathered[i % self.world][i // self.world] for i in range(count)])


def _sets_path(run_path: Path, epoch: int) -> Path:
    return run_path / TRAIN_DIR / f"sets-epoch-{epoch}.pt"


def _sets_at(epoch: int, run_path: Path, members: list[_Member], data: _Data, gang: _Gang,
             settings: TrainingSettings, callback) -> torch.Tensor:
    """The sets chosen after ``epoch`` epochs: stored ones, or scored and selected now."""
    path = _sets_path(run_path, epoch)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["sets"]
    behind = [m.index for m in members if m.epoch != epoch and m.diverged_epoch is None]
    if behind:
        raise InputError(f"{run_path}: members {behind} are not at epoch {epoch} but its SharpBalance sets "
                         f"({path.name}) are missing; the training state is inconsistent — start the run again")
    local = {m.index: m.scores(data) if m.diverged_epoch is None
             else torch.full((len(data.scoring),), math.nan, device=m.device) for m in members}
    scores = gang.gather_scores(local, len(settings.seeds)).to("cpu")
    if not bool(torch.isfinite(scores).all()):
        return None  # sets from non-finite scores would be meaningless: every process stops here
    sets = select_sets(scores, settings.k, settings.reference_compatible, settings.dataset)
    if gang.rank == 0:
        _save_atomically({"epoch": epoch, "sets": sets, "scores": scores, "k": settings.k,
                          "reference_compatible": settings.reference_compatible}, path)
    if callback is not None:
        callback({"event": "select", "epoch": epoch, "rank": gang.rank})
    return sets


def _spawn(run_path: Path, members: list[_Member], restored: dict[int, bool], gang: _Gang,
           settings: TrainingSettings) -> None:
    """At the spawn epoch: member 0's complete training state becomes the parent (written once by
    the process training member 0, checked by every process) and each member 1..M-1 not restored
    from its own checkpoint continues from it."""
    for member in members:
        if member.index == 0 and member.diverged_epoch is not None:
            _mark_failed(run_path, member)  # no parent: the members to spawn from it never start
        elif member.index == 0:
            single_basin.save_parent(run_path, member.state(), settings)
    gang.barrier()
    parent = single_basin.read_parent(run_path, settings)
    for member in members:
        if parent is not None and member.index != 0 and not restored[member.index]:
            member.spawn_from(parent)


def _share_anchor(run_path: Path, members: list[_Member], gang: _Gang, settings: TrainingSettings) -> dict | None:
    """Member 0's kept weights once it has finished: saved and recorded as the anchor by the process
    training it, checked and read by every process (None when member 0 diverged)."""
    for member in members:
        if member.index == 0 and member.diverged_epoch is None:
            _save_finished(run_path, member, settings)
            single_basin.record_anchor(run_path)
        elif member.index == 0:
            _mark_failed(run_path, member)
    gang.barrier()
    anchor = single_basin.read_anchor(run_path)
    return None if anchor is None else {name: tensor.to(members[0].device) for name, tensor in anchor.items()}


def _training_order(members: list[_Member], start: int, end: int, run_path: Path, gang: _Gang,
                    settings: TrainingSettings):
    """The members of this process that train in the phase ``[start, end)``, in order. Members
    1..M-1 of a spawned run wait for the parent (from the spawn epoch on); with the connectivity
    constraint, member 0, the anchor, trains to the end first, then the anchor is shared, then the
    others train against it. The caller trains each member to ``end`` before asking for the next."""
    spawning = settings.spawn_epoch is not None
    ready = [m for m in members if not (spawning and m.index != 0 and m.epoch < settings.spawn_epoch)]
    if not settings.connect_strength or end != settings.epochs:
        yield from ready
        return
    yield from [m for m in ready if m.index == 0]
    anchor = _share_anchor(run_path, members, gang, settings)
    for member in ready:
        if member.index != 0 and anchor is not None:
            member.anchor = anchor
            yield member


def _teacher_targets(teacher: torch.Tensor | None, index: int, settings: TrainingSettings,
                     device: torch.device) -> torch.Tensor | None:
    """Member ``index``'s soft targets ``(N, C)``: its own teacher member's, or the teacher ensemble's."""
    if teacher is None:
        return None
    if settings.distill_target == "ensemble":
        return ensemble_soft_targets(teacher, settings.distill_temperature).to(device)
    return soft_targets(teacher[index], settings.distill_temperature).to(device)


def _train_members(run_path: Path, settings: TrainingSettings, device: torch.device, gang: _Gang,
                   progress: bool, callback: Callable[[dict], None] | None,
                   teacher: torch.Tensor | None = None) -> None:
    data = _load_data(settings)
    members = [_Member(i, settings.seeds[i], settings, data.num_classes, device) for i in gang.own(len(settings.seeds))]
    restored = {member.index: member.load(run_path) for member in members}
    for member in members:
        member.teacher = _teacher_targets(teacher, member.index, settings, device)
    bars = {}  # a member's bar appears when it starts training, so its clock and ETA are its own
    boundaries = selection_epochs(settings)
    sets, start = None, 0
    for end in _phase_ends(settings):
        if start in boundaries:
            sets = _sets_at(start, run_path, members, data, gang, settings, callback)
            if sets is None:
                break
        if start == settings.spawn_epoch:
            _spawn(run_path, members, restored, gang, settings)
        for member in _training_order(members, start, end, run_path, gang, settings):
            if member.epoch < end and member.diverged_epoch is None:
                if member.index not in bars:
                    bars[member.index] = _progress_bar(member, settings, progress)
                bar = bars[member.index]
                bar.unpause()  # the time spent on the other members is not this member's
            while member.epoch < end and member.diverged_epoch is None and not member.stopped:
                row = member.train_epoch(data, sets)
                member.save(run_path)
                bar.update(1)
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_accuracy']:.3f}")
                if callback is not None:
                    callback({"event": "epoch", "member": member.index, "epoch": member.epoch})
        start = end
    for member in members:
        if bars.get(member.index) is not None:
            bars[member.index].close()
        if member.diverged_epoch is not None:
            _mark_failed(run_path, member)
        elif member.finished():
            _save_finished(run_path, member, settings)


def _phase_ends(settings: TrainingSettings) -> list[int]:
    """The epochs at which every member pauses: SharpBalance's selections, the spawn epoch, the end."""
    spawn = [settings.spawn_epoch] if settings.spawn_epoch else []
    return sorted({*selection_epochs(settings), *spawn, settings.epochs})


def _save_finished(run_path: Path, member: _Member, settings: TrainingSettings) -> None:
    """Write a finished member's kept weights and mark it done in run.json (with a criterion, its
    stopping epoch and whether it met the criterion)."""
    stopping = ({"stop_epoch": member.epoch, "reached_criterion": member.reached_criterion}
                if has_criterion(settings) else {})
    save_member(run_path, member.index, member.kept_weights(), status="done", seed=member.seed,
                kept=settings.keep, epoch=member.best_epoch if settings.keep == "best" else member.epoch,
                val_accuracy=member.best_accuracy if settings.keep == "best" else member.log[-1]["val_accuracy"],
                **stopping)


def _mark_failed(run_path: Path, member: _Member) -> None:
    """Record in run.json that ``member`` diverged; it gets no weights file, so nothing measures it."""
    from filelock import FileLock

    with FileLock(str(run_path / ".run.lock")):
        config = read_config(run_path)
        entry = config["members"][member.index]
        entry.update(status="failed", seed=member.seed, diverged_epoch=member.diverged_epoch)
        entry.pop("file", None)
        write_json(run_path / RUN_FILE, config)
    member_path(run_path, member.index).unlink(missing_ok=True)


def _refuse_diverged(run_path: Path, settings: TrainingSettings) -> None:
    """One InputError naming every member that diverged, after the others were saved."""
    members = read_config(run_path).get("members", [])
    failed = [m for m in members if m.get("status") == "failed" and m.get("diverged_epoch") is not None]
    unfinished = [m["index"] for m in members if m.get("status") not in ("done", "failed")]
    if not failed and not unfinished:
        return
    reason = ("SharpBalance's sets need every member" if settings.method == "sharpbalance"
              else "they start from or train against member 0")
    rest = f"; members {unfinished} stopped unfinished ({reason})" if unfinished else ""
    if not failed:
        raise InputError(f"training of {run_path} stopped: the SharpBalance scores are not finite{rest}")
    named = "; ".join(f"member {m['index']} (seed {m['seed']}) diverged at epoch {m['diverged_epoch']}" for m in failed)
    raise InputError(f"{named}: non-finite loss or weights, marked failed in {run_path}/run.json{rest}; "
                     "lower --lr or --weight-decay and train again")


def _progress_bar(member: _Member, settings: TrainingSettings, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=settings.epochs, initial=member.epoch, desc=f"member {member.index} (seed {member.seed})",
                position=member.index, leave=True, file=sys.stderr, disable=not enabled, unit="epoch")


def _process_main(rank: int, world: int, run_path: str, settings: TrainingSettings, device: str, threads: int,
                  progress: bool, rendezvous: str, teacher: torch.Tensor | None = None) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    chosen = torch.device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(chosen)
    # Processes wait at a barrier while member 0 trains alone (a spawn parent, an anchor): no timeout
    # shorter than a training; a process that fails ends them all (torch.multiprocessing.spawn).
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", init_method=rendezvous,
                            rank=rank, world_size=world, timeout=datetime.timedelta(days=30))
    try:
        _train_members(Path(run_path), settings, chosen, _Gang(rank, world), progress, callback=None, teacher=teacher)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run(run_path: Path, settings: TrainingSettings, members_parallel: int | None, device, progress: bool,
         callback) -> list["MemberSummary"]:
    device = torch.device(device or "cpu")
    world = _processes(settings, members_parallel, callback)
    teacher = _teacher(run_path, settings, device)
    if world == 1:
        _train_members(run_path, settings, device, _Gang(), progress, callback, teacher)
    else:
        import torch.multiprocessing as multiprocessing

        with tempfile.TemporaryDirectory(prefix="sharpdiv-rendezvous-") as folder:
            rendezvous = f"file://{Path(folder) / 'store'}"
            multiprocessing.spawn(_process_main, nprocs=world, join=True,
                                  args=(world, str(run_path), settings, str(device), torch.get_num_threads(),
                                        progress, rendezvous, teacher))
    _refuse_diverged(run_path, settings)
    return summarize(run_path)


def _teacher(run_path: Path, settings: TrainingSettings, device: torch.device) -> torch.Tensor | None:
    """The teacher's member logits ``(M, N, C)`` on the un-augmented training split (None without
    distillation), from its logit cache, after checking it is the teacher run.json records. An
    augmented image's target is the teacher's prediction on the image before augmentation."""
    if settings.distill_from is None:
        return None
    num_classes = int(read_config(run_path)["num_classes"])
    logits, labels = single_basin.teacher_logits(run_path, settings, num_classes, device)
    train = first_samples(load_dataset(settings.dataset, settings.data_path, "train"), settings.train_samples)
    if not torch.equal(labels[:len(train)], train.targets):
        raise InputError(f"the teacher's training labels differ from those of {settings.dataset}'s training split "
                         "here; distil on the data the teacher's logits were computed on")
    return logits[:, :len(train)].cpu()


def _processes(settings: TrainingSettings, members_parallel: int | None, callback) -> int:
    """How many processes train, checked before anything is written."""
    world = positive_int("members_parallel", 1 if not members_parallel else members_parallel)
    if world > len(settings.seeds):
        raise InputError(f"members_parallel = {world} but the ensemble has {len(settings.seeds)} members; "
                         "use at most one process per member")
    if world > 1 and callback is not None:
        raise InputError("a callback runs in one process only; drop members_parallel to use it")
    return int(world)


def _settings_record(settings: TrainingSettings) -> dict:
    """The settings as train/settings.json stores them (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(asdict(settings)))


def _with_declared_defaults(record: dict, settings_class: type) -> dict:
    """``record`` (a stored settings.json) with each setting it lacks, one added to the settings after
    it was written, at the value its declaration gives it (the field's default, or the method's), as
    :func:`settings_of_run` reads a run.json; a record that is not valid settings is left as it is."""
    names = [field.name for field in fields(settings_class)]
    if all(name in record for name in names):
        return record
    try:
        settled = _settings_record(settings_class(**{name: record[name] for name in names if name in record}))
    except (InputError, TypeError):
        return record
    return {**{name: settled[name] for name in names if name not in record}, **record}


def _require_own_training_state(run_path: Path, settings: TrainingSettings, recorded: bool) -> None:
    """An InputError when ``run_path/train`` holds training state of other settings than ``settings``
    (``recorded``: a state whose settings are not recorded is refused too — without a run.json
    nothing says where it came from)."""
    folder = run_path / TRAIN_DIR
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    file = folder / SETTINGS_FILE
    try:
        stored = json.loads(file.read_text())
    except FileNotFoundError:
        if recorded:
            raise InputError(f"{folder} holds training state of unknown settings (no {SETTINGS_FILE}); it may "
                             "belong to another run: remove it or choose another --out") from None
        return  # an older run: its run.json is the record
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {file} ({error}); remove {folder} to train from scratch") from None
    if isinstance(stored, dict):
        stored = _with_declared_defaults({**stored, **legacy_asam_scale(stored), **legacy_augmentation(stored)},
                                         type(settings))
    ours = _settings_record(settings)
    differing = [name for name in ours if not isinstance(stored, dict) or stored.get(name) != ours[name]]
    if differing:
        shown = ", ".join(f"{name} {ours[name]!r} here, {stored.get(name)!r} there" if isinstance(stored, dict)
                          else name for name in differing[:3])
        raise InputError(f"{folder} holds the training state of other settings ({shown}); remove it or "
                         "choose another --out")


# ----------------------------------------------------------------------------------------------
# public entry points


@dataclass(frozen=True)
class MemberSummary:
    member: int
    seed: int
    epochs: int
    best_epoch: int
    best_val_accuracy: float
    last_val_accuracy: float
    seconds: float
    #: With a criterion: whether the member met it (False: it stopped at the cap without), else None.
    reached_criterion: bool | None = None
    #: With a criterion: the last epoch's loss on the un-augmented training split (eval mode).
    train_eval_loss: float | None = None


def summarize(run_path: str | os.PathLike) -> list[MemberSummary]:
    """One line per member from its training log (and run.json's record of the criterion)."""
    table = read_training_log(run_path)
    entries = {entry["index"]: entry for entry in read_config(run_path).get("members", [])}
    rows = []
    for member, log in table.groupby("member", sort=True) if len(table) else []:
        best = log.loc[log["val_accuracy"].idxmax()]
        last = log.iloc[-1]
        checked = "train_eval_loss" in log and not _missing(last["train_eval_loss"])
        rows.append(MemberSummary(member=int(member), seed=int(log["seed"].iloc[0]), epochs=int(log["epoch"].max()),
                                  best_epoch=int(best["epoch"]), best_val_accuracy=float(best["val_accuracy"]),
                                  last_val_accuracy=float(log["val_accuracy"].iloc[-1]),
                                  seconds=float(log["seconds"].sum()),
                                  reached_criterion=entries.get(int(member), {}).get("reached_criterion"),
                                  train_eval_loss=float(last["train_eval_loss"]) if checked else None))
    return rows


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def missed_criterion(run_path: str | os.PathLike) -> list[str]:
    """One sentence per member of the run that stopped at the cap without meeting its criterion
    (run.json ``reached_criterion: false``); none for a run without a criterion."""
    config = read_config(run_path)
    criterion = criterion_text(config.get("until_train_loss"), config.get("until_train_accuracy"))
    losses = {row.member: row.train_eval_loss for row in summarize(run_path)}
    sentences = []
    for entry in config.get("members", []):
        if entry.get("reached_criterion") is False:
            loss = losses.get(entry["index"])
            shown = f" (train loss {loss:.4g} at its last epoch)" if loss is not None else ""
            sentences.append(f"member {entry['index']} (seed {entry.get('seed')}) did not reach {criterion} within "
                             f"{config.get('epochs')} epochs{shown}; it is kept, marked reached_criterion: false "
                             f"in {Path(run_path) / RUN_FILE}")
    return sentences


def read_training_log(run_path: str | os.PathLike):
    """All members' per-epoch rows as a DataFrame (epoch, member, seed, train_loss, train_accuracy,
    val_accuracy, lr, sharpbalance_sets, seconds; a run to a criterion also train_eval_loss and
    train_eval_accuracy)."""
    import pandas as pd

    rows = []
    for path in sorted((Path(run_path) / TRAIN_DIR).glob("log-member-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows).sort_values(["member", "epoch"], kind="stable").reset_index(drop=True) if rows \
        else pd.DataFrame(columns=["epoch", "member", "seed", "train_loss", "train_accuracy", "val_accuracy", "lr",
                                   "sharpbalance_sets", "seconds"])


def train(out: str | os.PathLike, settings: TrainingSettings, *, members_parallel: int | None = None,
          device: str | torch.device | None = None, progress: bool = False,
          callback: Callable[[dict], None] | None = None, force: bool = False) -> list[MemberSummary]:
    """Train the ensemble ``settings`` describes into the new run folder ``out``.

    ``out`` must be missing, empty or made by sharpdiv (``force``: any folder); a ``train/`` state
    already there is continued only if it was trained with the same settings.

    ``members_parallel=N`` trains in N processes (members r, r+N, ... in process r); otherwise
    all members take turns in this one. ``callback(event)`` (one process only) is called after
    each member's epoch checkpoint (``{"event": "epoch", "member", "epoch"}``) and after each
    selection (``{"event": "select", "epoch"}``). Returns one summary per member.
    """
    out = Path(out)
    # Everything is checked before the first write, so a refused command leaves nothing behind.
    _processes(settings, members_parallel, callback)
    if (out / RUN_FILE).exists():
        _refuse_existing_run(out)
    require_writable_folder(out, force, "--out")
    train_data = load_dataset(settings.dataset, settings.data_path, "train")  # fails early on a missing dataset
    settings = with_resolved_input(settings, train_data.num_classes)  # fails early on a bad model
    teacher = ({"teacher": single_basin.teacher_record(settings.distill_from, settings, train_data.num_classes)}
               if settings.distill_from is not None else {})
    _require_own_training_state(out, settings, recorded=True)
    mark_folder(out, "run")
    write_json(out / TRAIN_DIR / SETTINGS_FILE, _settings_record(settings))
    # The thread count changes how CPU kernels split their sums, so resuming bit for bit needs it again.
    create_run(out, dataset=settings.dataset, num_classes=train_data.num_classes, model=settings.model,
               model_args=_model_args(settings), model_input=settings.model_input, method=settings.method,
               seeds=settings.seeds, keep=settings.keep,
               **settings.run_fields(), **teacher, threads=torch.get_num_threads(),
               device=str(torch.device(device or "cpu")))
    return _run(out, settings, members_parallel, device, progress, callback)


def _refuse_existing_run(out: Path) -> None:
    """The refusal to train into a run folder: an interrupted training run is continued with
    ``--resume``, never discarded by a message that points elsewhere."""
    config = read_config(out)
    unfinished = [m["index"] for m in config["members"] if m.get("status") != "done"]
    if unfinished and config.get("method") in METHODS and "epochs" in config:
        shown = ", ".join(map(str, unfinished))
        raise InputError(f"{out} holds a training run that was interrupted (member{'s' if len(unfinished) > 1 else ''} "
                         f"{shown} unfinished): `sharpdiv train --resume {out}` continues it; or choose another --out")
    raise InputError(f"{out} already holds a run (run.json exists); choose another folder or remove it")


def with_resolved_input(settings: TrainingSettings, num_classes: int) -> TrainingSettings:
    """``settings`` with ``model_input`` as run.json records it: the values given, and the model
    library's defaults (timm's data config) for the rest. Builds the model once, without touching
    the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        model = zoo.build(settings.model, num_classes, **_model_args(settings))
    return replace(settings, model_input=zoo.resolve_input(settings.model, model, **(settings.model_input or {})))


def settings_of_run(run_path: str | os.PathLike) -> TrainingSettings:
    """The :class:`TrainingSettings` a run folder was trained with (from its run.json)."""
    config = read_config(run_path)
    names = {f.name for f in fields(TrainingSettings)}
    if "epochs" not in config or config.get("method") not in METHODS:
        raise InputError(f"{run_path} was not made by `sharpdiv train` (run.json lacks its settings); nothing to resume")
    values = {name: config[name] for name in names if name in config and config[name] is not None}
    values["seeds"] = tuple(config["seeds"])
    values.update(legacy_augmentation(config))
    values["model_args"] = {k: v for k, v in config.get("model_args", {}).items() if k != "width"} or None
    values.update(legacy_asam_scale(config))
    return TrainingSettings(**values)


def resume(run_path: str | os.PathLike, *, threads: int | None = None, members_parallel: int | None = None,
           device: str | torch.device | None = None, progress: bool = False,
           callback: Callable[[dict], None] | None = None,
           note: Callable[[str], None] | None = None) -> list[MemberSummary]:
    """Continue a run folder's training from its last checkpoints (a finished run is left as it is).

    The weights equal an uninterrupted run's only with the thread count and device it was trained
    with (run.json). ``threads=None`` trains with the stored thread count; another ``threads`` or
    device is allowed but noted as not bit-identical. The caller's thread count is restored on
    return. ``note(sentence)`` receives these remarks (default: :func:`warnings.warn` for the ones
    that put bit-identical weights at risk, silence for the thread count restored as stored).
    """
    run_path = Path(run_path)
    settings = settings_of_run(run_path)
    # a model naming code that is not trusted (or not buildable) is refused before anything else
    check_member_model(read_config(run_path), source=str(run_path / RUN_FILE))
    _require_own_training_state(run_path, settings, recorded=False)

    def tell(sentence: str, at_risk: bool = True) -> None:
        if note is not None:
            note(sentence)
        elif at_risk:
            warnings.warn(sentence, stacklevel=3)

    config = read_config(run_path)
    stored_threads, stored_device = config.get("threads"), config.get("device")
    positive_int("threads", threads, optional=True)
    if threads is None and stored_threads is not None:
        threads = int(stored_threads)
        tell(f"resuming with {threads} torch thread{'s' if threads != 1 else ''}, as {run_path} was trained "
             "(run.json), so the weights match an uninterrupted run", at_risk=False)
    elif threads is None:
        tell(f"{run_path}/run.json does not record the thread count it was trained with (an older run); "
             "the weights match an uninterrupted run only with the same --threads")
    elif stored_threads is not None and threads != int(stored_threads):
        tell(f"resuming with {threads} torch threads but {run_path} was trained with {stored_threads}: the "
             "weights will not be bit-identical to an uninterrupted run (drop --threads to use the run's own)")
    chosen = torch.device(device or "cpu")
    if stored_device is not None and torch.device(stored_device).type != chosen.type:
        tell(f"resuming on {chosen} but {run_path} was trained on {stored_device}: the weights will not be "
             "bit-identical to an uninterrupted run")
    outside = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(run_path, settings, members_parallel, device, progress, callback)
    finally:
        torch.set_num_threads(outside)
