"""The training settings, each declared once.

Every field of :class:`TrainingSettings` carries a :class:`Setting` in its metadata that says all the
rest of the package needs to know about it:

- its rule: an integer or a finite number in a range, one of some choices, a switch, the seed list,
  a table (``model_args``, ``model_input``), or a name its owner checks (a dataset, a model);
- its help, the methods that use it (``methods``), the value those methods give it when it is not
  set (``when_unset``: a value, or a function of the other settings), and the value it holds under
  the methods that do not use it (``unused``: 0 for SGD's ρ, else None);
- its command-line flag (``flag``), whether ``sharpdiv train`` offers that flag (``command_line``),
  whether a sweep may set it (``axis``: False for what says where or how fast, not which ensemble),
  and how a sweep's run folder name spells it (``short``, or ``words`` for a switch).

Four views are derived from these declarations and from nothing else:

1. the validation of every TrainingSettings (:func:`settle`, run on construction);
2. the refusal of a setting the chosen method does not use (never silently dropped; a sweep drops
   such an axis from the jobs of that method instead, :func:`Setting.used_by`);
3. the options of ``sharpdiv train`` (``cli.training_options``);
4. the sweep's axes, their rules and their spelling in run folder names (:mod:`ensembles.studies.sweep`).

The checks that tie two settings together (distinct seeds, ``prune_epoch < epochs``, ``keep = best``
against a training criterion, for SharpBalance two members, ``td < epochs`` and ``reselect_every``
against ``reference_compatible``, for single-basin ensembles two members, ``spawn_epoch < epochs``,
the distillation settings only with a teacher and the constraint not with distillation, and a training
criterion not with a spawned or constrained ensemble) are written out once, in
:func:`check_across_settings`. A new hyper-parameter is one field below, plus the trainer code that
uses it.

This module imports nothing heavy: the command line reads it before torch is loaded. The vocabularies
owned by modules that need torch (augmentations, ASAM's scales, the zoo's models, dataset names) are
looked up only when a value is checked.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cache
from typing import Callable

from landscape.errors import InputError

__all__ = ["METHODS", "SCHEDULES", "MAX_SEED", "Setting", "TrainingSettings", "declared", "settle",
           "check_across_settings", "criterion_text", "has_criterion"]

METHODS = ("sgd", "sam", "asam", "sharpbalance")
#: The methods as prose names them (messages).
METHOD_NAMES = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "sharpbalance": "SharpBalance"}
#: The methods that take a SAM step (ρ-ball ascent), so use ρ.
SHARPNESS_AWARE = ("sam", "asam", "sharpbalance")
SCHEDULES = ("multistep", "cosine", "constant")
KEEP = ("best", "last")
#: Whom a distilled member learns from: its own teacher member, or the teacher ensemble's mean.
DISTILL_TARGETS = ("member", "ensemble")
#: The methods that build single-basin ensembles (spawning, the connectivity constraint, distillation):
#: SharpBalance is not among them, its set selection needs every member in lockstep from the start.
SINGLE_BASIN = ("sgd", "sam", "asam")
#: Seeds go to torch.manual_seed and numpy's SeedSequence: non-negative and within int64.
MAX_SEED = 2**63 - 1
#: A torchvision:/timm:/module.path:callable model name; a sweep puts it in a folder name.
_EXTERNAL_MODEL = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
#: The key of a field's metadata that holds its Setting.
_KEY = "setting"


@dataclass(frozen=True)
class Setting:
    """The one declaration of a training setting (see the module text for what each part feeds).

    ``kind`` is ``integer``, ``number`` (finite), ``choice``, ``switch`` (a boolean), ``seeds``,
    ``table`` (a dict, of ``keys`` when given), ``path`` or ``name`` (checked by ``check``, which
    raises an InputError). ``low``/``high`` bound integers and numbers (``low_open``/``high_open``:
    the bound itself is outside). ``choices`` is a tuple, or a function returning the tuple of a
    module that needs torch. ``optional``: None is a value of its own (not set, e.g. the model's own
    width). ``when_unset`` (and ``when_unset_text`` for ``--help`` when it is a function of the
    settings) fills a setting a method uses when it is None. ``short`` is the prefix before the value
    in a run folder name (None: the setting's name; "": the value alone, made path-safe); ``words`` the
    two words of a switch (on, off). ``reference`` marks a value that names another run folder and says
    what that run is to this one ("teacher"): a sweep trains it first, and run.json's record of that
    name (``{"members": [weight digests], ...}``) ties this run to its content.
    """

    kind: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | Callable[[], tuple] = ()
    keys: tuple[str, ...] | None = None
    check: Callable[[object], object] | None = None
    wanted_text: str | Callable[[], str] = ""
    optional: bool = False
    methods: tuple[str, ...] = METHODS
    when_unset: object = None
    when_unset_text: str = ""
    unused: object = None
    flag: str = ""
    aliases: tuple[str, ...] = ()  # further flags of the same option (--max-epochs for --epochs)
    command_line: bool = True
    axis: bool = True
    short: str | None = None
    words: tuple[str, str] | None = None
    reference: str = ""
    name: str = ""  # filled in from the field by declared()

    def used_by(self, method: str) -> bool:
        """Whether the setting changes the ensemble ``method`` trains."""
        return method in self.methods

    @property
    def choice_values(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    @property
    def wanted(self) -> str:
        """What a value must be, as a phrase: "an integer >= 1", "a fraction in (0, 1]" ..."""
        if self.kind == "integer":
            return "an integer" + self._bounds()
        if self.kind == "number":
            if (self.low, self.high) == (0, 1):
                return f"a fraction in {'(' if self.low_open else '['}0, 1{')' if self.high_open else ']'}"
            return "a finite number" + self._bounds()
        if self.kind == "choice":
            return f"one of {', '.join(self.choice_values)}"
        if self.kind == "switch":
            return "true or false"
        if self.kind == "seeds":
            return f"a list of integer seeds in 0..{MAX_SEED}, one per member"
        return self.wanted_text() if callable(self.wanted_text) else self.wanted_text

    def _bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " " + " and ".join(parts) if parts else ""

    def problem(self, value) -> str | None:
        """Why ``value`` is not a value of this setting, as one sentence naming it; None if it is."""
        if value is None:
            return None if self.optional else f"{self.name} must be {self.wanted}, got None"
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choice_values:
                return None
            return f"unknown {self.name} {value!r}; choose one of {', '.join(self.choice_values)}"
        if self.kind == "seeds":
            return _seeds_problem(value)
        if self.check is not None:
            try:
                self.check(value)
            except InputError as error:
                return str(error)
            return None
        return None if self._accepts(value) else f"{self.name} must be {self.wanted}, got {value!r}"

    def _accepts(self, value) -> bool:
        if self.kind == "integer":
            return _integer(value) and self._within(value)
        if self.kind == "number":
            return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                    and self._within(value))
        if self.kind == "switch":
            return isinstance(value, bool)
        if self.kind == "table":
            return isinstance(value, dict) and all(isinstance(key, str) and (self.keys is None or key in self.keys)
                                                   for key in value)
        if self.kind == "path":
            return isinstance(value, str)
        raise ValueError(f"setting {self.name!r} declares an unknown kind {self.kind!r}")

    def _within(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def normalized(self, value):
        """``value`` in the one spelling the settings keep (so resume compares like with like):
        seeds a tuple of ints, an empty table None, a path a string, a NumPy integer an int."""
        if value is None:
            return None
        if self.kind == "seeds" and not isinstance(value, (str, bytes, dict)) and hasattr(value, "__iter__"):
            return tuple(int(seed) if _integer(seed) else seed for seed in value)
        if self.kind == "table" and isinstance(value, dict):
            return dict(value) or None
        if self.kind == "path" and isinstance(value, os.PathLike):
            return os.fspath(value)
        if self.kind == "integer" and _integer(value):
            return int(value)
        return value

    def default_for(self, settings):
        """The value a method that uses this setting gives it when it is not set (None: none)."""
        return self.when_unset(settings) if callable(self.when_unset) else self.when_unset

    def shown_default(self):
        """The methods' default as ``--help`` states it (its text when it is a function of the settings)."""
        return self.when_unset_text or self.when_unset


def _seeds_problem(seeds) -> str | None:
    """The seeds rule's message, naming the first seed outside it."""
    if not isinstance(seeds, (list, tuple)) or not seeds:
        return f"seeds must be a list of integer seeds, one per member, e.g. --seeds 13,17,27; got {seeds!r}"
    for seed in seeds:
        if not _integer(seed):
            return f"seed {seed!r} is not an integer; give one whole number per member, e.g. --seeds 13,17,27"
        if not 0 <= seed <= MAX_SEED:
            return f"seed {seed} is outside 0..{MAX_SEED} (2^63 - 1); give seeds in that range"
    return None


def _integer(value) -> bool:
    """A Python or NumPy integer; booleans, and floats even when whole, are not."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def setting(default=MISSING, **declaration) -> dataclasses.Field:
    """A field of a settings dataclass, declared by a :class:`Setting` made of ``declaration``."""
    return dataclasses.field(default=default, metadata={_KEY: Setting(**declaration)})


@cache
def declared(settings_class: type | None = None) -> dict[str, Setting]:
    """Each declared setting of ``settings_class`` (default :class:`TrainingSettings`) by name, in
    field order, with its name and flag filled in."""
    settings_class = settings_class or TrainingSettings
    table = {}
    for field in fields(settings_class):
        declaration = field.metadata.get(_KEY)
        if declaration is None:
            raise TypeError(f"{settings_class.__name__}.{field.name} is not declared; make it with setting(...)")
        table[field.name] = dataclasses.replace(
            declaration, name=field.name, flag=declaration.flag or "--" + field.name.replace("_", "-"))
    return table


# ----------------------------------------------------------------------------------------------
# rules owned by other modules, looked up when a value is checked (they need torch)


def _augmentations() -> tuple:
    from ensembles.data.datasets import AUGMENTATIONS

    return AUGMENTATIONS


def _asam_scales() -> tuple:
    from ensembles.methods.sam import ASAM_SCALES

    return ASAM_SCALES


_DATASET_NAMES = "a dataset name (cifar10, cifar100, tinyimagenet, digits or folder:<path>)"


def _model_names() -> str:
    from ensembles.models.zoo import MODEL_NAMES

    return f"one of {', '.join(MODEL_NAMES)}, or torchvision:<name>, timm:<name> or module.path:callable"


def _check_dataset(value) -> None:
    from ensembles.data.datasets import _parse_name

    if not isinstance(value, str) or not value.strip():
        raise InputError(f"dataset must be {_DATASET_NAMES}, got {value!r}")
    _parse_name(value)


def _check_model(value) -> None:
    from ensembles.models.zoo import MODEL_NAMES

    if not (isinstance(value, str) and (value in MODEL_NAMES or _EXTERNAL_MODEL.fullmatch(value))):
        raise InputError(f"unknown model {value!r}; choose {_model_names()}")


def _dataset_augmentation(settings) -> str:
    from ensembles.data.datasets import default_augmentation

    return default_augmentation(settings.dataset)


def _half_the_epochs(settings) -> int:
    return max(settings.epochs // 2, 1)


def _with_a_teacher(value):
    """The default of a distillation setting: ``value`` when a teacher is named, else unset."""
    return lambda settings: value if settings.distill_from is not None else None


def _check_teacher_path(value) -> None:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise InputError(f"distill_from must be the path of a teacher run folder, got {value!r}")


def has_criterion(settings) -> bool:
    """Whether the members train until a criterion on the training split (``epochs`` is then the cap)."""
    return settings.until_train_loss is not None or settings.until_train_accuracy is not None


def criterion_text(until_train_loss=None, until_train_accuracy=None) -> str:
    """The criterion as prose names it: "train loss <= 0.01", "train loss <= 0.01 and train accuracy >= 1"
    (both must hold); "" for none."""
    parts = []
    if until_train_loss is not None:
        parts.append(f"train loss <= {until_train_loss:g}")
    if until_train_accuracy is not None:
        parts.append(f"train accuracy >= {until_train_accuracy:g}")
    return " and ".join(parts)


def _kept_weights(settings) -> str:
    # best-on-validation weights need not meet the criterion: with one, the stopping epoch's are kept
    return "last" if has_criterion(settings) else "best"


#: The methods that can stop a member on its own: SharpBalance selects its sets at T_d from every
#: member's scores, so its members train in lockstep for a fixed number of epochs (as the paper's do).
_STOPPING_METHODS = ("sgd", "sam", "asam")
_CRITERION_HELP = ("(un-augmented, eval mode, checked after every epoch); --epochs is then the cap. With both "
                   "criteria both must hold. SharpBalance trains its members in lockstep, so it cannot stop one.")


# ----------------------------------------------------------------------------------------------
# the settings


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that defines a trained ensemble; stored flat in run.json.

    Each field is declared once (:class:`Setting`, see the module text): its rule, help, the methods
    that use it and the default they give it. A setting given to a method that does not use it is an
    InputError, never silently dropped (``rho = 0`` stays allowed for SGD: SAM with ρ = 0 is SGD
    exactly); one a method uses but that is not given gets the method's default (``rho`` 0.2, ``eta``
    0.01 and ``asam_scale`` "weights" for ASAM, ``k`` 0.4 and ``td`` half the epochs for SharpBalance,
    ``keep`` "best", or "last" with a training criterion).
    """

    dataset: str = setting(kind="name", check=_check_dataset, wanted_text=_DATASET_NAMES, flag="--data",
                           command_line=False, short="",
                           help="The dataset: cifar10, cifar100, tinyimagenet, digits or folder:<path>.")
    model: str = setting(kind="name", check=_check_model, wanted_text=_model_names,
                         command_line=False, short="", help="The architecture (ensembles.models.zoo.build).")
    method: str = setting("sgd", kind="choice", choices=METHODS, short="",
                          help="Training method: deep ensemble (sgd), SAM, ASAM or SharpBalance.")
    seeds: tuple[int, ...] = setting((13, 17, 27), kind="seeds", help="One seed per member.")
    rho: float | None = setting(None, kind="number", low=0, methods=SHARPNESS_AWARE, when_unset=0.2, unused=0.0,
                                help="SAM radius.")
    k: float | None = setting(None, kind="number", low=0, low_open=True, high=1, methods=("sharpbalance",),
                              when_unset=0.4,
                              help="Fraction of the training set each member contributes to the others' sets.")
    td: int | None = setting(None, kind="integer", low=1, methods=("sharpbalance",), when_unset=_half_the_epochs,
                             when_unset_text="half the epochs", help="Epoch of the (first) selection, T_d.")
    epochs: int = setting(200, kind="integer", low=1, short="e", aliases=("--max-epochs",),
                          help="Epochs to train; with --until-train-loss or --until-train-accuracy, the most a member "
                               "trains (--max-epochs is the same setting).")
    until_train_loss: float | None = setting(
        None, kind="number", low=0, low_open=True, optional=True, methods=_STOPPING_METHODS, short="ul",
        help="Stop each member once its mean cross-entropy on the training split is <= X " + _CRITERION_HELP)
    until_train_accuracy: float | None = setting(
        None, kind="number", low=0, low_open=True, high=1, optional=True, methods=_STOPPING_METHODS, short="ua",
        help="Stop each member once its accuracy on the training split is >= A " + _CRITERION_HELP)
    lr: float = setting(0.1, kind="number", low=0, low_open=True)
    schedule: str = setting("multistep", kind="choice", choices=SCHEDULES, short="",
                            help="multistep: x0.1 at 50% and 75% of the epochs; cosine: to 0 over the epochs; "
                                 "constant: the lr throughout. With a criterion the epochs are the cap, so "
                                 "multistep and cosine follow the cap; constant suits an open-ended run.")
    batch_size: int = setting(128, kind="integer", low=1, short="b")
    augmentation: str | None = setting(
        None, kind="choice", choices=_augmentations, when_unset=_dataset_augmentation,
        when_unset_text="none for digits, crop-flip otherwise", short="",
        help="Training augmentation: crop-flip (CIFAR's padded crop and mirror), crop (no mirror) or none; "
             "recorded in run.json.")
    weight_decay: float = setting(5e-4, kind="number", low=0, short="wd")
    momentum: float = setting(0.9, kind="number", low=0, short="mom")
    width: int | None = setting(None, kind="integer", low=1, optional=True, short="w",
                                help="Model width (resnet18 k, small_cnn w; Fig. 5a).")
    sparsity: float = setting(0.0, kind="number", low=0, high=1, high_open=True, short="sp",
                              help="Global magnitude pruning to this fraction of zero weights (Fig. 5b).")
    prune_epoch: int = setting(0, kind="integer", low=0, short="pe",
                               help="Dense warm-up epochs before pruning (0: prune at initialization).")
    reselect_every: int | None = setting(None, kind="integer", low=1, optional=True, methods=("sharpbalance",),
                                         short="re", help="Select the sets again every E epochs after td.")
    reference_compatible: bool = setting(
        False, kind="switch", methods=("sharpbalance",), unused=False, words=("ref", "paper"),
        help="SharpBalance as the released code does it (lowest k, its leftovers, one selection, BN on the "
             "perturbed pass).")
    keep: str | None = setting(None, kind="choice", choices=KEEP, short="", when_unset=_kept_weights,
                               when_unset_text="best; last with a criterion",
                               help="Member weights: best on validation, or the last epoch's (with a criterion: the "
                                    "stopping epoch's; best is refused there).")
    eta: float | None = setting(None, kind="number", low=0, methods=("asam",), when_unset=0.01,
                                help="η in ASAM's scale T = |θ| + η (Kwon et al. 2021).")
    asam_scale: str | None = setting(
        None, kind="choice", choices=_asam_scales, methods=("asam",), when_unset="weights", short="scale-",
        help="Which parameters ASAM's T scales: weights = official ASAM (names containing 'weight'; biases and "
             "batch-norm shifts unscaled), all = every parameter.")
    data_path: str | None = setting(None, kind="path", optional=True, wanted_text="a folder path", flag="--data-path",
                                    command_line=False, axis=False, help="Folder holding the datasets.")
    train_samples: int | None = setting(None, kind="integer", low=1, optional=True, short="n",
                                        help="Train on the first N training samples only (smoke tests).")
    score_chunk_size: int = setting(128, kind="integer", low=1, command_line=False, axis=False,
                                    help="How many per-sample gradients exist at once while scoring.")
    model_args: dict | None = setting(None, kind="table", optional=True, flag="--model-arg", command_line=False,
                                      wanted_text="a table of the model builder's keyword arguments",
                                      help="Keyword arguments of the model's builder besides width.")
    model_input: dict | None = setting(
        None, kind="table", keys=("size", "mean", "std"), optional=True, flag="--input-size", command_line=False,
        wanted_text="a table with size, mean and std (any of them)",
        help="The model's own input size and normalization (ensembles.models.inputs.resolve_input); "
             "train() fills in the library's defaults.")
    # Single-basin ensembles (Lion et al. 2024): ensembles/training/trainer.py says how each is trained.
    spawn_epoch: int | None = setting(
        None, kind="integer", low=0, optional=True, methods=SINGLE_BASIN, short="spawn",
        help="Spawn members 1..M-1 from member 0's complete training state after this many epochs (0: a shared "
             "initialization); each continues with its own data order and augmentation.")
    connect_strength: float | None = setting(
        None, kind="number", low=0, optional=True, methods=SINGLE_BASIN, short="connect",
        help="λ of the connectivity constraint: member 0 (the anchor) trains first; members 1..M-1 minimise "
             "L(θ) + λ·L((1-α)·θ_anchor + α·θ), α ~ U(0, 1) per step; 0 is plain training.")
    distill_from: str | None = setting(
        None, kind="path", check=_check_teacher_path, optional=True, methods=SINGLE_BASIN, reference="teacher",
        wanted_text="the path of a teacher run folder", short="from-",
        help="Distil from this teacher run folder's predictions on the training split, read from its logit cache.")
    distill_weight: float | None = setting(
        None, kind="number", low=0, high=1, optional=True, methods=SINGLE_BASIN, when_unset=_with_a_teacher(0.5),
        when_unset_text="0.5 with --distill-from", short="dw",
        help="w in the distillation loss (1 - w)·CE + w·τ²·KL(teacher || student).")
    distill_temperature: float | None = setting(
        None, kind="number", low=0, low_open=True, optional=True, methods=SINGLE_BASIN,
        when_unset=_with_a_teacher(2.0), when_unset_text="2 with --distill-from", short="tau",
        help="Temperature τ of the distillation loss (Hinton et al. 2015).")
    distill_target: str | None = setting(
        None, kind="choice", choices=DISTILL_TARGETS, optional=True, methods=SINGLE_BASIN,
        when_unset=_with_a_teacher("member"), when_unset_text="member with --distill-from", short="to-",
        help="member: member i learns from teacher member i (equal member counts); ensemble: from the teacher "
             "ensemble's mean probabilities.")

    def __post_init__(self):
        settle(self)

    @property
    def sharpness_aware(self) -> bool:
        return self.method != "sgd"

    def run_fields(self) -> dict:
        """The flat hyper-parameters for run.json (a setting the method does not use holds its
        ``unused`` value: None, or 0 for SGD's ρ)."""
        values = asdict(self)
        for name in ("dataset", "model", "method", "seeds", "keep", "model_args", "model_input"):
            values.pop(name)
        return values


# ----------------------------------------------------------------------------------------------
# the validation, derived from the declarations


def settle(settings) -> None:
    """Bring ``settings`` (a frozen settings dataclass, on construction) to its one spelling, check it,
    and fill in what its method gives the settings left unset; an InputError names the first problem.

    In this order, so each message names the cause: the method; a setting the method does not use;
    every value given; the method's defaults (they may read other values: td is half the epochs); the
    checks across settings."""
    table = declared(type(settings))

    def put(name, value):
        object.__setattr__(settings, name, value)

    for name, declaration in table.items():
        put(name, declaration.normalized(getattr(settings, name)))
    _refuse(table["method"], settings.method)
    method = settings.method
    refuse_settings_the_method_ignores(settings)
    used = [declaration for declaration in table.values() if declaration.used_by(method)]
    for declaration in used:
        if getattr(settings, declaration.name) is not None:
            _refuse(declaration, getattr(settings, declaration.name))
    for declaration in table.values():
        if not declaration.used_by(method):
            put(declaration.name, declaration.unused)
        elif getattr(settings, declaration.name) is None and declaration.when_unset is not None:
            put(declaration.name, declaration.default_for(settings))
            _refuse(declaration, getattr(settings, declaration.name))
        elif getattr(settings, declaration.name) is None:
            _refuse(declaration, None)  # None is refused unless the setting is optional
    check_across_settings(settings)


def _refuse(declaration: Setting, value) -> None:
    problem = declaration.problem(value)
    if problem is not None:
        raise InputError(problem)


def refuse_settings_the_method_ignores(settings) -> None:
    """An InputError for settings given to a method that would ignore them (all those that the same
    methods use, named by their flags), never silently dropped."""
    method = settings.method
    ignored = [declaration for declaration in declared(type(settings)).values()
               if not declaration.used_by(method) and getattr(settings, declaration.name) not in (None, declaration.unused)]
    if not ignored:
        return
    users = ignored[0].methods
    named = [declaration for declaration in ignored if declaration.methods == users]
    shown = " ".join(declaration.flag if declaration.kind == "switch"
                     else f"{declaration.flag} {getattr(settings, declaration.name)}" for declaration in named)
    only = f" ({METHOD_NAMES.get(users[0], users[0])} only)" if len(users) == 1 else ""
    verb, pronoun = ("has", "it") if len(named) == 1 else ("have", "them")
    raise InputError(f"{shown} {verb} no effect with --method {method}{only}; drop {pronoun} or use "
                     f"--method {users[0]}")


def check_across_settings(settings) -> None:
    """The rules that tie two settings together, each written once (the rules of one setting come
    from its declaration)."""
    if len(set(settings.seeds)) != len(settings.seeds):
        raise InputError(f"seeds repeat ({settings.seeds}); identical seeds give identical members")
    if settings.sparsity and not settings.prune_epoch < settings.epochs:
        raise InputError(f"prune_epoch must lie in 0..{settings.epochs - 1} (before the last epoch), "
                         f"got {settings.prune_epoch}")
    if has_criterion(settings) and settings.keep == "best":
        criterion = criterion_text(settings.until_train_loss, settings.until_train_accuracy)
        raise InputError(f"keep best is refused with a criterion ({criterion}): the best-on-validation weights need "
                         "not meet it; drop --keep best to keep the weights of the epoch each member stopped at")
    if settings.method == "sharpbalance":
        if len(settings.seeds) < 2:
            raise InputError("SharpBalance needs at least 2 members: a member's set comes from the others' scores")
        if settings.td >= settings.epochs:
            raise InputError(f"td = {settings.td} >= epochs = {settings.epochs}: the sets would never be used and "
                             "this would be plain SAM; choose td < epochs (the paper uses td = epochs / 2), or "
                             "--method sam")
        if settings.reselect_every is not None and settings.reference_compatible:
            raise InputError("--reference-compatible selects once, as the released code does; drop --reselect-every")
    _check_single_basin(settings)


def _check_single_basin(settings) -> None:
    """The rules of spawning, the connectivity constraint and distillation across settings."""
    members = len(settings.seeds)
    if settings.spawn_epoch is not None:
        if members < 2:
            raise InputError("--spawn-epoch needs at least 2 members: members 1..M-1 are spawned from member 0")
        if not settings.spawn_epoch < settings.epochs:
            raise InputError(f"spawn_epoch must lie in 0..{settings.epochs - 1} (before the last epoch), "
                             f"got {settings.spawn_epoch}")
    if settings.connect_strength and members < 2:
        raise InputError("--connect-strength needs at least 2 members: members 1..M-1 stay connected to member 0")
    if has_criterion(settings) and (settings.spawn_epoch is not None or settings.connect_strength):
        # member 0 is the parent or the anchor: stopped early, it could leave the others nothing to start from
        which = "--spawn-epoch" if settings.spawn_epoch is not None else "--connect-strength"
        raise InputError(f"{which} is not offered with a training criterion: member 0, the parent or the anchor of the "
                         "others, would stop on its own; train the construction for a fixed number of epochs")
    if settings.distill_from is None:
        given = [flag for name, flag in (("distill_weight", "--distill-weight"),
                                         ("distill_temperature", "--distill-temperature"),
                                         ("distill_target", "--distill-target"))
                 if getattr(settings, name) is not None]
        if given:
            raise InputError(f"{' '.join(given)} {'has' if len(given) == 1 else 'have'} no effect without "
                             "--distill-from; name a teacher run folder or drop "
                             f"{'it' if len(given) == 1 else 'them'}")
    elif settings.connect_strength:
        raise InputError("--connect-strength and --distill-from are two constructions; choose one "
                         "(combine --distill-from with --spawn-epoch to distil inside one basin)")
