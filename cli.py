"""The ``sharpdiv`` command: one thin click command per job.

Each command parses options, calls library functions, writes results and prints a short summary
on stdout; progress bars go to stderr. Bad input ends with one line on stderr and exit status 2.
Conventions shared by every command:

- ``--data NAME`` and ``--data-path DIR`` name a dataset and where it lies on disk;
- lists are comma lists (``--seeds 13,17,27``, ``--rho 0.1,0.2``) and ranges are ``1-5``;
- run folders are positional ``RUN...`` arguments;
- ``--device auto|cpu|cuda[:i]`` and ``--threads N``.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import sys
import warnings
from pathlib import Path

import click

from ensembles import cpus
from ensembles.training.settings import METHODS, TrainingSettings, declared  # torch-free: options are built at import
from landscape.errors import InputError


class _Group(click.Group):
    """Turns InputError anywhere below, and click's own usage errors, into one line on stderr and
    exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_note
                status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            click.echo(f"sharpdiv: error: {error.format_message()}{where}", err=True)
            sys.exit(2)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("sharpdiv: aborted", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as error:
            click.echo(f"sharpdiv: error: {error}", err=True)
            ctx.exit(2)
        except Exception as error:  # noqa: BLE001 - only what the file system refused is turned into one line
            line = file_system_error(error)
            if line is None:
                raise
            click.echo(f"sharpdiv: error: {line}", err=True)
            ctx.exit(2)


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (Lanczos short of its tolerance, a cache file computed again) are remarks on
    a result that was stored, not failures: one line marked as a note, without the file name and
    source line that made them read like a traceback. Deprecations keep Python's form."""
    if issubclass(category, DeprecationWarning):
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    click.echo(f"sharpdiv: note: {message}", err=True)


_ROOM = {errno.ENOSPC: ("no space left on the device", "free some space"),
         getattr(errno, "EDQUOT", errno.ENOSPC): ("the disk quota is used up", "free some space or raise the quota"),
         errno.EFBIG: ("the file would exceed the largest file allowed (the file system's limit, or this process's: "
                       "ulimit -f)", "raise the limit or write to another file system")}
_NOTHING_LOST = "Nothing was lost: files are written whole or not at all, and the unfinished ones were removed"


def file_system_error(error: BaseException) -> str | None:
    """One line for a write the file system refused (a full disk, a quota, a file-size limit, a
    read-only folder), naming the file where known; None for any other error. Libraries that wrap
    the OS error (safetensors, pyarrow) keep its number or text, so they are recognised too
    (:func:`ensembles.runs.files.write_failure`)."""
    from ensembles.runs.files import write_failure

    code = write_failure(error)
    if code is None and isinstance(error, PermissionError):
        code = errno.EACCES
    name = getattr(error, "filename", None) if isinstance(error, OSError) else None
    if code in _ROOM:
        cause, fix = _ROOM[code]
        where = f"cannot write {name}: " if name else ""
        return f"{where}{cause}; {fix} and run again. {_NOTHING_LOST}"
    if code in (errno.EACCES, errno.EROFS):
        why = "a read-only file system" if code == errno.EROFS else "permission denied"
        if not name:
            return f"{why} ({error}); make the folder writable or choose another one"
        path = Path(name)
        if path.exists():
            return f"{path}: {why}; make it readable and writable for you, or choose another folder"
        # A file that could not be created: the folder it belongs in is read-only.
        return (f"{path.parent} is read-only ({why}): nothing can be written in it; make it writable "
                "(chmod u+w) or choose another folder")
    return None


class RunFolder(click.ParamType):
    """A run folder (holding run.json), checked before any command imports torch (~5 s)."""

    name = "run"

    def convert(self, value, param, ctx):
        from ensembles.runs.files import require_run_folder
        return require_run_folder(value)


class CommaList(click.ParamType):
    """``13,17,27`` -> [13, 17, 27]; ranges ``1-5`` are allowed for integers (``1-3,5``)."""

    name = "list"

    def __init__(self, item_type=str, ranges: bool = False):
        self.item_type = item_type
        self.ranges = ranges

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        items = []
        for piece in str(value).split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                if self.ranges and "-" in piece[1:]:
                    low, high = piece.split("-", 1)
                    low, high = int(low), int(high)
                    if low > high:
                        self.fail(f"range {piece!r} runs backwards", param, ctx)
                    items.extend(range(low, high + 1))
                else:
                    items.append(self.item_type(piece))
            except ValueError:
                self.fail(f"{piece!r} is not a valid {self.item_type.__name__}", param, ctx)
        if not items:
            self.fail("empty list", param, ctx)
        return items


def data_options(required: bool = False):
    """``--data NAME`` and ``--data-path DIR``; on run folders ``--data`` defaults to the run's own."""

    def decorate(function):
        function = click.option("--data-path", type=click.Path(file_okay=False, path_type=Path), default=None,
                                help="Folder holding the datasets (default $SHARPDIV_DATA, then ~/.cache/sharpdiv/data).")(function)
        function = click.option("--data", "dataset", required=required, default=None,
                                help="cifar10, cifar100, tinyimagenet, digits or folder:<path>.")(function)
        return function

    return decorate


def configure_threads(threads: int | None = None) -> None:
    """Set OpenMP's environment before torch is imported (it is read once, when torch loads).

    ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning, which otherwise makes
    a 2-thread forward-backward pass 10-50x slower when another process shares the cores.
    ``OMP_NUM_THREADS``: ``threads`` (``--threads``) when given, else one per usable CPU. Values the
    user set in the environment are kept (``--threads`` still wins over OMP_NUM_THREADS). Once torch
    is imported the environment no longer matters; :func:`resolve_device` sets torch's count then.
    """
    if "torch" in sys.modules:
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus.usable_cpus()))


def _threads_option(ctx, param, value):
    configure_threads(value)  # parsing happens before any command body imports torch
    return value


MODEL_HELP = ("resnet18, resnet18_tin, wrn40_2, small_cnn, mlp; torchvision:<name>, timm:<name> (pip install "
              "'sharpdiv[timm]'), or module.path:callable (your factory or class, importable from here).")


def model_options(function):
    """``--model-arg KEY=VALUE`` (repeatable) and the model's own ``--input-size``, ``--mean``, ``--std``."""
    function = click.option("--std", type=CommaList(float), default=None, metavar="S1,S2,S3",
                            help="Per-channel std the model normalises with, inside the model (with --mean).")(function)
    function = click.option("--mean", type=CommaList(float), default=None, metavar="M1,M2,M3",
                            help="Per-channel mean the model normalises [0, 1] inputs with, inside the model "
                                 "(default: timm's data config; else the data pipeline's dataset statistics).")(function)
    function = click.option("--input-size", type=CommaList(int), default=None, metavar="S or H,W",
                            help="Image size the model expects; inputs are resized inside the model "
                                 "(default: timm's data config; else the data's own size).")(function)
    function = click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
                            help="Keyword argument of the model's builder, JSON where it parses "
                                 "(--model-arg drop_rate=0.1); repeatable; stored in run.json.")(function)
    return function


def model_settings(pairs, input_size, mean, std) -> tuple[dict, dict | None]:
    """The builder's keyword arguments and the requested ``model_input`` (None: library defaults).
    Values are ``True``/``False``/``None``, JSON where they parse, else text
    (:func:`ensembles.models.arguments.parse_value`); the builder checks their types."""
    from ensembles.models.arguments import parse_value

    model_args = {}
    for pair in pairs:
        key, sign, text = pair.partition("=")
        if not sign or not key.strip():
            raise InputError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. --model-arg drop_rate=0.1")
        model_args[key.strip()] = parse_value(text)
    if input_size is not None and len(input_size) not in (1, 2):
        raise InputError(f"--input-size takes one size or H,W, got {len(input_size)} numbers")
    size = None if input_size is None else (input_size[0] if len(input_size) == 1 else input_size)
    given = {"size": size, "mean": mean, "std": std}
    return model_args, (given if any(v is not None for v in given.values()) else None)


def _trust_callback(ctx, param, value):
    if value:  # for this command, and the processes it starts (they inherit the environment)
        from ensembles.models.trust import trusting_model_code

        ctx.with_resource(trusting_model_code())
    return value


def trust_option(function):
    """``--trust-model-code``: build models that name Python code (``module.path:callable``)."""
    return click.option("--trust-model-code", is_flag=True, expose_value=False, callback=_trust_callback,
                        help="Build models that name Python code (module.path:callable): imports and runs it. "
                             "Only for code you trust; a run folder from elsewhere can name any module "
                             "(also: SHARPDIV_TRUST_MODEL_CODE=1).")(function)


def device_options(function):
    """``--device`` and ``--threads``."""
    function = click.option("--threads", type=click.IntRange(min=1), default=None, callback=_threads_option,
                            help="CPU threads for torch (default: $OMP_NUM_THREADS, else one per usable CPU).")(function)
    function = click.option("--device", default="auto", show_default=True,
                            help="auto, cpu, cuda or cuda:<i>.")(function)
    return function


def resolve_device(device: str, threads: int | None = None):
    """The torch device a ``--device`` value names; sets the thread count when given."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<i>") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return chosen


def parse_assignments(pairs) -> dict:
    """``key=value`` pairs from ``--set``; values are read as ``--model-arg`` values are
    (``True``/``False``/``None``, JSON where they parse: numbers, lists; else text)."""
    from ensembles.models.arguments import parse_value

    settings = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set {pair!r}: expected key=value, e.g. --set rho=0.2")
        key, text = pair.split("=", 1)
        value = parse_value(text)
        if key.strip() == "seeds":
            value = _seed_list(text, value)
        settings[key.strip()] = value
    return settings


def _seed_list(text: str, value) -> list:
    """``seeds=13,17,27`` (or ``[13, 17, 27]``, or one seed) as a list; the import checks the values."""
    if isinstance(value, str):
        try:
            return [int(s) for s in value.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--set seeds={text}: expected whole numbers separated by commas, "
                             "e.g. --set seeds=13,17,27") from None
    return value if isinstance(value, list) else [value]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sharpdiv", message="sharpdiv %(version)s")
def main():
    """sharpdiv: sharpness, diversity and their trade-off in deep ensembles."""
    # Runs before any command's options are parsed and before any command imports torch.
    configure_threads()


@main.command("import")
@click.option("--model", "model_name", required=True, help="Architecture of the checkpoints: " + MODEL_HELP)
@model_options
@trust_option
@click.option("--num-classes", required=True, type=click.IntRange(min=2))
@click.option("--data", "dataset", required=True, help="Dataset the members were trained on (cifar10, cifar100, tinyimagenet, digits, folder:<path>).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Model width, when the model has one.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Record a setting in run.json (method, rho, width, seeds=13,17,27 ...); repeatable.")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def import_command(model_name, model_arg, input_size, mean, std, num_classes, dataset, width, assignments, out, files):
    """Build the run folder OUT from checkpoint FILES, one member per file.

    Reads plain state dicts, dicts holding 'state_dict', 'model' or 'last', DataParallel
    'module.' prefixes and SharpBalance's seed_<s>/model_best.pth.tar, always with
    weights_only=True: a file whose pickle carries code is refused and nothing is written.
    """
    from ensembles.runs.checkpoint_import import import_checkpoints

    settings = parse_assignments(assignments)
    model_args, model_input = model_settings(model_arg, input_size, mean, std)
    if width is not None:
        if "width" in model_args:
            raise InputError(f"the width is given twice (--width {width} and --model-arg width=...); give it once")
        model_args["width"] = width
    if "width" in settings:
        if "width" in model_args:
            raise InputError(f"the width is given twice (--width/--model-arg and --set width={settings['width']}); "
                             "give it once, with --width")
        model_args["width"] = settings.pop("width")
    import_checkpoints(out, files, model=model_name, num_classes=num_classes, dataset=dataset,
                       model_args=model_args, model_input=model_input, settings=settings)
    click.echo(f"imported {len(files)} members into {out}")


@main.command("theory")
@click.option("--figure", required=True, type=click.Choice(["1b", "2", "9", "10", "11"]),
              help="Paper figure: 1b (SAM vs SharpBalance), 2 and 10 (Theorem 1), 9 and 11 (Theorem 2).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNG, SVG and CSV.")
@click.option("--quick", is_flag=True, help="Small configuration (300x30, 8 data sets) that runs in seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random data, teachers and initialisations.")
def theory_command(figure, out, quick, seed):
    """Simulate Theorems 1 and 2 of SharpBalance and plot them against theory (paper §3, App. C)."""
    from ensembles.studies.theory import write_theory_table
    from reports.theory import diversity_at_matched_sharpness, write_theory_figure

    table = write_theory_table(figure, out, quick=quick, seed=seed, progress=True)
    paths = [*write_theory_figure(table), table]
    for path in paths:
        click.echo(f"wrote {path}")
    finding = diversity_at_matched_sharpness(paths[-1])
    if finding.verdict != "not comparable":  # only figures with both methods answer the question
        click.echo(finding.statement)


@main.command("corrupt")
@data_options(required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data root to write <Folder>-C into (pass it later as --data-path).")
@click.option("--corruptions", type=CommaList(str), default=None,
              help="Comma list of corruptions (default: every one that needs no image assets).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Regenerate a -C folder written with other settings (another --seed "
                                            "or other clean data) instead of refusing it.")
def corrupt_command(dataset, data_path, out, corruptions, seed, force):
    """Write the CIFAR-10-C-style corrupted test split of a data set (5 severities each)."""
    from ensembles.data.corruptions import write_corrupted_dataset

    folder, written, kept = write_corrupted_dataset(dataset, data_path, out, corruptions, seed=seed, progress=True,
                                                    force=force)
    click.echo(f"{folder}: wrote {len(written)} corruptions" + (f", kept {len(kept)} already there" if kept else ""))


@main.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tables, figures, index.html and README.md.")
@click.option("--sharpness", default="sharpness/worst/l2/adaptive@0.5", show_default=True, metavar="METRIC@RHO",
              help="Members' mean sharpness to plot against diversity: sharpness/<worst|average>/<l2|linf>/"
                   "<adaptive|standard>@RHO (or sharpness-error/...@RHO; add :reference for rows measured "
                   "with --ascent reference), or hessian/trace, fisher/mean ...")
@click.option("--diversity", type=click.Choice(["der", "variance", "kl"]), default="der", show_default=True)
@click.option("--diversity-on", type=click.Choice(["ood", "test"]), default="ood", show_default=True,
              help="Corrupted data (mean over slices) or the clean test split.")
@click.option("--group-by", default="method", show_default=True,
              help="run.json field that groups runs (method, rho, width, sparsity ...), or a comma list "
                   "(method,rho) as in sweeps; construction: deep ensemble, spawned, constrained, distilled.")
@click.option("--baseline", default=None,
              help="Group the severity tables compare with (default: the deep ensemble when grouped by "
                   "construction, else sgd if it has data, else the first that has).")
@click.option("--combine", type=click.Choice(["probs", "logits", "vote"]), default="probs", show_default=True,
              help="Which stored ensemble rows to read.")
@click.option("--correlate-with", default=None, metavar="TARGET",
              help="Show the section \"Does sharpness predict generalization?\" against this target: test_error, "
                   "generalization_gap, ood_error, ood_error/s<k>, test_nll or ece. Without it the section "
                   "appears (against test_error) when the runs form a zoo: 8 or more models whose training "
                   "hyper-parameters vary besides the method and the grouping.")
@click.option("--force", is_flag=True,
              help="Write into --out even if it holds files sharpdiv did not write (same-named ones are replaced).")
def report_command(runs, out, sharpness, diversity, diversity_on, group_by, baseline, combine, correlate_with, force):
    """Tables, trade-off figures with β and an index.html from the stored results of RUNS.

    Reads only what other commands stored; names each missing measurement with the command that
    would store it.
    """
    from reports.site import write_report

    report = write_report(runs, out, sharpness=sharpness, diversity=diversity, diversity_on=diversity_on,
                          group_by=group_by, baseline=baseline, combine=combine, force=force,
                          correlate_with=correlate_with)
    for note in report.notes:
        click.echo(f"sharpdiv: note: {note}", err=True)
    tables = len({path.stem.removesuffix("-runs") for path in report.tables})
    figures = len({path.with_suffix("") for path in report.figures})
    click.echo(f"wrote {tables} tables and {figures} figures to {report.directory}")
    click.echo(f"open {report.index} (file list: {report.readme})")


@main.command("evaluate")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--corruptions", default="all", show_default=True,
              help="all (the 15 standard corruptions present on disk), none, or a comma list (fog,contrast).")
@click.option("--severities", type=CommaList(int, ranges=True), default="1-5", show_default=True,
              help="Corruption severities, e.g. 1-5 or 3,5.")
@click.option("--combine", type=click.Choice(["probs", "logits", "vote"]), default="probs", show_default=True,
              help="Ensemble prediction: mean probabilities, mean logits, or majority vote.")
@click.option("--n-bins", type=click.IntRange(min=1), default=15, show_default=True, help="Confidence bins of ECE.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--splits", default="val,test", show_default=True,
              help="Clean splits to evaluate; add train (without augmentation) for the generalization gap.")
@trust_option
@device_options
def evaluate_command(runs, dataset, data_path, corruptions, severities, combine, n_bins, batch_size, splits, device,
                     threads):
    """Accuracy, calibration, diversity and ensemble gains of each RUN on every data slice.

    Slices: val, clean test, and each corruption x severity of the -C data. Member logits are
    computed once per slice and cached in the run folder (logits/); rows go to the run's results
    table: per member, for the ensemble and for the first k members (ensemble@k). Repeating the
    command reuses the cache and the stored rows.
    """
    from ensembles.studies.evaluation import evaluate_runs

    chosen = resolve_device(device, threads)
    evaluations = evaluate_runs(runs, dataset=dataset, root=data_path, corruptions=corruptions, severities=severities,
                                combine=combine, n_bins=n_bins, batch_size=batch_size, device=chosen, progress=True,
                                splits=splits)
    # Notes (e.g. no -C folder for --corruptions all) also go to stderr, once each, so a script sees them.
    for note in dict.fromkeys(note for evaluation in evaluations for note in evaluation.notes):
        click.echo(f"sharpdiv: note: {note}", err=True)
    for evaluation in evaluations:
        click.echo("\n".join(evaluation.summary()))


@main.command("robustness")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--norm", required=True, type=click.Choice(["linf", "l2"]), help="Threat model.")
@click.option("--eps", required=True, type=click.FloatRange(min=0, min_open=True),
              help="Radius in input space [0, 1]: at most 1 for linf (e.g. 0.0314 = 8/255), at most "
                   "sqrt(C*H*W) for l2 (e.g. 0.5).")
@click.option("--n-examples", required=True, type=click.IntRange(min=1), help="The first N images of the split.")
@click.option("--attacks", type=CommaList(str), default="apgd-ce,apgd-t", show_default=True,
              help="AutoAttack attacks: apgd-ce, apgd-t, apgd-dlr, fab, fab-t, square.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--combine", type=click.Choice(["probs", "logits"]), default="probs", show_default=True,
              help="How the attacked ensemble combines its members.")
@trust_option
@device_options
def robustness_command(runs, dataset, data_path, norm, eps, n_examples, attacks, split, batch_size, seed, combine,
                       device, threads):
    """AutoAttack robust accuracy of each member of each RUN and of the ensemble as one model."""
    from ensembles.studies.evaluation import evaluate_robustness

    chosen = resolve_device(device, threads)
    evaluations = evaluate_robustness(runs, norm=norm, eps=eps, n_examples=n_examples, attacks=attacks, split=split,
                                      batch_size=batch_size, seed=seed, combine=combine, dataset=dataset,
                                      root=data_path, device=chosen, progress=True)
    for evaluation in evaluations:
        click.echo("\n".join(evaluation.summary()))


class _ChoiceOwnedElsewhere(click.ParamType):
    """A declared choice whose values belong to a module that needs torch (the augmentations, ASAM's
    scales): ``--help`` lists them, and the settings check the value once the command runs, so no
    option loads torch while the options are parsed (before ``--threads`` is applied)."""

    name = "choice"

    def __init__(self, declaration):
        self.declaration = declaration

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(self.declaration.choice_values) + "]"

    def convert(self, value, param, ctx):
        return value


def training_options(settings_class):
    """One option per setting ``settings_class`` declares for the command line, derived from its
    declaration (:mod:`ensembles.training.settings`): the flag, the type and range or choices, the
    default, and the help with the methods that use it and their default."""

    def option(declaration, default):
        help_text = declaration.help
        if declaration.methods != METHODS:  # "SAM radius (sam, asam, sharpbalance only)."
            only = f" ({', '.join(declaration.methods)} only)"
            help_text = help_text[:-1] + only + "." if help_text.endswith(".") else help_text + only
        shown = {}
        if declaration.when_unset is not None:
            help_text += f" [default: {declaration.shown_default()}]"
        elif default is not None and declaration.kind != "switch":
            shown = {"show_default": True}
        if declaration.kind == "switch":
            return click.option(declaration.flag, *declaration.aliases, declaration.name, is_flag=True,
                                default=bool(default), help=help_text)
        bounds = dict(min=declaration.low, max=declaration.high, min_open=declaration.low_open,
                      max_open=declaration.high_open)
        if declaration.kind == "integer":
            kind = click.IntRange(**bounds)
        elif declaration.kind == "number":
            kind = click.FloatRange(**bounds)
        elif declaration.kind == "choice" and callable(declaration.choices):
            kind = _ChoiceOwnedElsewhere(declaration)
        elif declaration.kind == "choice":
            kind = click.Choice(declaration.choices)
        elif declaration.kind == "seeds":
            kind, default = CommaList(int), ",".join(str(seed) for seed in default)
        elif declaration.kind in ("name", "path"):
            kind = click.STRING  # checked by the settings, as every name is
        else:
            raise TypeError(f"{declaration.name}: a {declaration.kind} setting has no command-line form; "
                            "declare it with command_line=False")
        return click.option(declaration.flag, *declaration.aliases, declaration.name, type=kind, default=default,
                            help=help_text or None, **shown)

    def decorate(function):
        defaults = {field.name: field.default for field in dataclasses.fields(settings_class)}
        for name, declaration in reversed(declared(settings_class).items()):
            if declaration.command_line:
                function = option(declaration, defaults[name])(function)
        return function

    return decorate


def train_command_for(settings_class) -> click.Command:
    """``sharpdiv train`` for the settings ``settings_class`` declares (its options derived from them)."""

    @click.command("train")
    @data_options()
    @click.option("--model", "model_name", default=None, help="Architecture: " + MODEL_HELP)
    @model_options
    @training_options(settings_class)
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="New run folder.")
    @click.option("--resume", "resume_run", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Continue this run folder's training (every other setting comes from its run.json).")
    @click.option("--members-parallel", type=click.IntRange(min=1), default=None,
                  help="Train in N processes (torch.distributed), one member per process.")
    @click.option("--force", is_flag=True, help="Write into --out even if it holds files sharpdiv did not make.")
    @trust_option
    @device_options
    @click.pass_context
    def train_command(ctx, dataset, data_path, model_name, model_arg, input_size, mean, std, out, resume_run,
                      members_parallel, force, device, threads, **given):
        """Train an ensemble (deep ensemble, SAM, ASAM or SharpBalance) into the run folder OUT.

        Checkpoints every epoch into OUT/train; `sharpdiv train --resume OUT` continues after an
        interruption and ends with the same weights. Progress bars on stderr, a summary on stdout.
        """
        if resume_run is not None:
            _refuse_flags_resume_ignores(ctx)
        from ensembles.training.trainer import missed_criterion, resume, train

        chosen = resolve_device(device, threads if resume_run is None else None)  # resume sets the run's own
        if resume_run is not None:
            summaries = resume(resume_run, threads=threads, members_parallel=members_parallel, device=chosen,
                               progress=True, note=lambda sentence: click.echo(f"sharpdiv: note: {sentence}", err=True))
            out = resume_run
        else:
            missing = [flag for flag, value in (("--data", dataset), ("--model", model_name), ("--out", out))
                       if value is None]
            if missing:
                raise InputError(f"sharpdiv train needs {', '.join(missing)} (or --resume RUN)")
            model_args, model_input = model_settings(model_arg, input_size, mean, std)
            settings = settings_class(dataset=dataset, model=model_name, model_args=model_args or None,
                                      model_input=model_input, data_path=None if data_path is None else str(data_path),
                                      **given)
            summaries = train(out, settings, members_parallel=members_parallel, device=chosen, progress=True,
                              force=force)
        for row in summaries:
            stopped = {True: " (criterion met)", False: " (cap, criterion not met)"}.get(row.reached_criterion, "")
            click.echo(f"member {row.member} (seed {row.seed}): {row.epochs} epochs{stopped}, best val accuracy "
                       f"{row.best_val_accuracy:.4f} at epoch {row.best_epoch}, last {row.last_val_accuracy:.4f}, "
                       f"{row.seconds:.0f} s")
        for sentence in missed_criterion(out) if any(row.reached_criterion is False for row in summaries) else []:
            click.echo(f"sharpdiv: warning: {sentence}", err=True)
        click.echo(f"run folder: {out}")

    return train_command


main.add_command(train_command_for(TrainingSettings))


#: What `train --resume` takes from the command line; every other setting comes from run.json.
_RESUME_OPTIONS = ("resume_run", "members_parallel", "device", "threads", "trust_model_code")


def _refuse_flags_resume_ignores(ctx: click.Context) -> None:
    """An InputError naming the options given with --resume that it would ignore."""
    from click.core import ParameterSource

    given = [param.opts[0] for param in ctx.command.params
             if param.name not in _RESUME_OPTIONS
             and ctx.get_parameter_source(param.name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]
    if given:
        raise InputError(f"--resume continues with the run's own settings (run.json); {', '.join(given)} "
                         f"would be ignored: drop {'it' if len(given) == 1 else 'them'}")


@main.group("sweep", cls=_Group)
def sweep_group():
    """Grids of ensembles from a sweep file (TOML): plan, run (here or on SLURM), status, report.

    See examples/ for sweep files and ensembles/studies/sweep.py for the format.
    """


@sweep_group.command("plan")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def sweep_plan_command(file):
    """Print the jobs FILE expands to: one run folder per grid point, the runs each reads, and what
    follows training."""
    from ensembles.studies.sweep import check_library_models, plan_notes, plan_table, read_sweep

    sweep = read_sweep(file)
    check_library_models(sweep)  # as training would: a model's options, before anything is planned
    click.echo(plan_table(sweep).to_string(index=False))
    click.echo(f"{len(sweep.jobs)} jobs; after training: "
               + ("; ".join(measure.describe() for measure in sweep.measurements) or "nothing"))
    for note in plan_notes(sweep):
        click.echo(note)
    click.echo(f"report grouped by {', '.join(sweep.group_by)}")


def _sweep_report(sweep, paths, out, force=False):
    """The report over a sweep's runs, grouped by its [report] axes (reports.site.write_report)."""
    from ensembles.studies.sweep import group_runs
    from reports.site import write_report

    if not paths:
        raise InputError(f"no run of the sweep {sweep.name} has finished members yet; run it first "
                         "(sharpdiv sweep run FILE --out ROOT)")
    options = {key: sweep.report[key] for key in ("sharpness", "diversity", "diversity_on", "baseline", "combine")
               if key in sweep.report}
    report = write_report(paths, out, group_by=group_runs(sweep, paths), force=force, **options)
    for note in report.notes:
        click.echo(f"sharpdiv: note: {note}", err=True)
    return report


@sweep_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Root folder: one run folder per grid point, the sweep log, and report/.")
@click.option("--executor", type=click.Choice(["local", "slurm", "debug"]), default="local", show_default=True,
              help="local: here (N processes with --jobs); slurm: an array job; debug: submitit in-process.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Jobs at once (local: processes, one GPU each when there are GPUs, default 1; slurm: a cap on "
                   "the array's tasks running at once, default none).")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Submit failed jobs again this many times (only their missing work is redone).")
@click.option("--slurm-partition", default=None, help="SLURM partition.")
@click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs per SLURM task.")
@click.option("--cpus-per-job", type=click.IntRange(min=1), default=None, help="CPUs per SLURM task.")
@click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), default=None, help="Memory per SLURM task.")
@click.option("--time", "time_limit", default="24:00:00", show_default=True,
              help="Time per SLURM task ([D-]HH:MM:SS or minutes, at least 2); preempted or timed-out tasks are "
                   "requeued, warned a tenth of it (at most 120 s) before the limit.")
@click.option("--slurm-account", default=None)
@click.option("--slurm-qos", default=None)
@click.option("--slurm-constraint", default=None)
@click.option("--setup", "setup", multiple=True,
              help="Shell line run before each SLURM task (repeatable), e.g. 'source .venv/bin/activate'.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for SLURM jobs and report (or submit and return; then use sweep status/report).")
@click.option("--report/--no-report", "make_report", default=True, show_default=True,
              help="Write the report into ROOT/report at the end.")
@click.option("--force", is_flag=True,
              help="Write the report into ROOT/report even if it holds files sharpdiv did not write.")
@click.option("--data-path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the datasets (default: the file's data_path, then $SHARPDIV_DATA).")
@trust_option
@device_options
def sweep_run_command(file, out, executor, jobs, retries, slurm_partition, gpus_per_job, cpus_per_job, mem_gb,
                      time_limit, slurm_account, slurm_qos, slurm_constraint, setup, wait, make_report, force,
                      data_path, device, threads):
    """Train and measure every grid point of FILE into --out; stored work is skipped.

    Each job trains its run folder (or resumes it, or keeps it when finished) and runs the sweep's
    measurements, which reuse stored rows: stop it any time and run it again. The dataset is a
    setting of the file; --data-path overrides the file's data_path.
    """
    from ensembles.studies.slurm import check_time_limit, timeout_minutes
    from ensembles.studies.sweep import ClusterRequest, check_before_running, read_sweep, run_sweep, sweep_runs

    sweep = read_sweep(file)
    # checked before anything is submitted; a limit a task could not checkpoint within only matters on SLURM
    (check_time_limit if executor == "slurm" else timeout_minutes)(time_limit)
    # every job's data, model (code only with --trust-model-code) and corrupted data, before anything is made
    check_before_running(sweep, str(data_path) if data_path else sweep.data_path)
    if make_report:  # refused now, not after hours of training
        from reports.site import check_report_folder

        check_report_folder(Path(out) / "report", force, "the sweep's report folder")
    if executor != "slurm" or device != "auto":
        resolve_device(device, threads)
    cluster = ClusterRequest(partition=slurm_partition, gpus_per_job=gpus_per_job, time=time_limit,
                             cpus_per_job=cpus_per_job, mem_gb=mem_gb, account=slurm_account, qos=slurm_qos,
                             constraint=slurm_constraint, setup=tuple(setup))
    result = run_sweep(sweep, out, executor=executor, jobs=jobs, retries=retries, cluster=cluster,
                       data_path=str(data_path) if data_path else None, device=device, wait=wait, progress=True,
                       echo=lambda message: click.echo(message, err=True))
    if not result.waited:
        click.echo(f"submitted {len(result.job_ids)} jobs; follow them with: sharpdiv sweep status {file} --root {out}")
        if result.waiting:
            click.echo(f"{len(result.waiting)} jobs read runs not finished yet; run this command again once they are")
        return
    for outcome in result.outcomes:
        click.echo(outcome.line())
    trained = sum(outcome.trained for outcome in result.outcomes)
    click.echo(f"{len(result.outcomes)} of {len(sweep.jobs)} jobs done ({trained} trained now, "
               f"{len(result.outcomes) - trained} already trained); {len(result.failures)} failed"
               + (f", {len(result.skipped)} skipped" if result.skipped else ""))
    for name, error in result.failures.items():
        click.echo(f"sharpdiv: job {name} failed: {error}", err=True)
    for name, reason in result.skipped.items():
        click.echo(f"sharpdiv: job {name} {reason}", err=True)
    if make_report:
        paths = sweep_runs(sweep, out)
        if paths:
            report = _sweep_report(sweep, paths, Path(out) / "report", force=force)
            click.echo(f"report: {report.index}")
    if result.failures or result.skipped:
        raise SystemExit(1)


@sweep_group.command("status")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
# --root as in `sweep report`; --out, its first name here, still works
@click.option("--root", "--out", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The sweep's root folder (its --out when it ran).")
def sweep_status_command(file, root):
    """Per grid point: training state and the last action of each measurement (from the sweep log)."""
    from ensembles.studies.sweep import read_sweep, sweep_status

    click.echo(sweep_status(read_sweep(file), root).to_string(index=False))


@sweep_group.command("report")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The sweep's root folder (its --out when it ran).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the report.")
@click.option("--group-by", default=None, help="Comma list of axes to group by (default: the file's [report]).")
@click.option("--force", is_flag=True,
              help="Write into --out even if it holds files sharpdiv did not write (same-named ones are replaced).")
def sweep_report_command(file, root, out, group_by, force):
    """The report over every finished run of the sweep, grouped by its swept axes, with β per group."""
    from dataclasses import replace

    from ensembles.studies.sweep import read_sweep, sweep_runs

    sweep = read_sweep(file)
    if group_by:
        sweep = replace(sweep, report={**sweep.report, "group_by": [a.strip() for a in group_by.split(",") if a.strip()]})
    paths = sweep_runs(sweep, root)
    report = _sweep_report(sweep, paths, out, force=force)
    click.echo(f"{len(paths)} of {len(sweep.jobs)} runs reported; open {report.index}")


@main.command("quickstart")
@click.option("--out", default="sharpdiv-quickstart", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for data/ (digits-C), runs/ and report/; re-running reuses what it holds.")
@click.option("--fast", is_flag=True, help="A smoke test of the pipeline (2 radii, 2 members, 2 epochs; about a minute): numbers mean nothing.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Ensembles trained at once, one process each [default on a CPU: the usable cores / --threads].")
@device_options
def quickstart_command(out, fast, jobs, device, threads):
    """SGD, SAM and SharpBalance ensembles on digits, measured and reported, in minutes on a CPU.

    Writes digits-C, trains small CNN ensembles with SGD, SAM over a rho sweep and SharpBalance,
    measures adaptive worst-case sharpness and the Hessian trace, evaluates every metric on clean and
    corrupted data (per severity), and writes the report with the sharpness-diversity trade-off
    and its slope beta. It is a sweep: running it again on the same --out reuses everything.

    Parallelism is chosen for the machine: on a CPU, one process per usable core, each with one
    torch thread (--jobs and --threads override either). The numbers depend on --threads, not on --jobs.
    """
    import time

    from ensembles.studies.quickstart import SHARPNESS, quickstart_sweep, run_quickstart
    from reports.tables import quickstart_summary

    started = time.perf_counter()
    chosen = resolve_device(device, threads)
    result = run_quickstart(out, fast=fast, device=str(chosen), progress=True, jobs=jobs, threads=threads,
                            echo=lambda message: click.echo(message, err=True))
    click.echo(f"writing the report into {result.report_path}", err=True)
    report = _sweep_report(quickstart_sweep(fast), list(result.runs), result.report_path)
    seconds = time.perf_counter() - started
    trained = sum(outcome.trained for outcome in result.sweep.outcomes)
    click.echo(f"quickstart{' --fast' if fast else ''}: {len(result.runs)} ensembles on digits "
               f"({trained} trained now, {len(result.runs) - trained} reused) in {seconds:.0f} s")
    for line in quickstart_summary(list(result.runs), sharpness=SHARPNESS):
        click.echo(line)
    click.echo(f"report: {report.index}")
    if fast:
        click.echo("(--fast is a smoke test of the pipeline: its ensembles are barely trained, so these numbers say nothing)")


@main.command("sharpness")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Split the batches are drawn from (never augmented).")
@click.option("--kind", type=click.Choice(["worst", "average"]), default="worst", show_default=True,
              help="Worst case (APGD in weight space) or average over random perturbations.")
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--adaptive/--standard", default=True, show_default=True,
              help="Radius scaled by |weight| (adaptive) or the same for every weight (standard).")
@click.option("--rho", "rhos", type=CommaList(float), default="0.5", show_default=True,
              help="Radius, or a comma list of radii (0.25,0.5,1).")
@click.option("--batch-size", "m", type=click.IntRange(min=1), default=5, show_default=True,
              help="m of m-sharpness: samples per batch, each batch with its own perturbation.")
@click.option("--n-batches", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=13, show_default=True,
              help="Seeds the draw of the batches (the same for every member) and random perturbations.")
@click.option("--n-iters", type=click.IntRange(min=1), default=20, show_default=True, help="Ascent steps (worst case).")
@click.option("--n-restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ascent starts (worst case); after the first they are random.")
@click.option("--n-samples", type=click.IntRange(min=1), default=100, show_default=True,
              help="Random perturbations per batch (average case).")
@click.option("--exclude", type=CommaList(str), default=None,
              help="Parameter-name patterns to leave unperturbed, e.g. '*bn*,*.bias'.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Batches (average case: draws) evaluated at once; bounds memory (default all).")
@click.option("--ascent", type=click.Choice(["apgd", "reference"]), default="apgd", show_default=True,
              help="Worst case: sharpdiv's APGD in the ball's own metric, or the reference code's update "
                   "(comparable with published values); stored as a setting, the two never mix.")
@trust_option
@device_options
def sharpness_command(runs, dataset, data_path, split, kind, norm, adaptive, rhos, m, n_batches, seed, n_iters,
                      n_restarts, n_samples, exclude, chunk_size, ascent, device, threads):
    """m-sharpness of every member of each RUN, and its mean over members.

    Defaults are SharpBalance's: worst case, l2, adaptive, rho 0.5, 100 batches of 5 training
    samples drawn with seed 13. Rows: sharpness/<kind>/<norm>/<adaptive|standard> and
    sharpness-error/... per member and for the ensemble (aggregate=mean). Stored rows are reused.
    """
    from ensembles.studies.measurements import measure_sharpness

    chosen = resolve_device(device, threads)
    measurements = measure_sharpness(runs, dataset=dataset, root=data_path, split=split, kind=kind, norm=norm,
                                     adaptive=adaptive, rhos=rhos, m=m, n_batches=n_batches, seed=seed,
                                     n_iters=n_iters, n_restarts=n_restarts, n_samples=n_samples, exclude=exclude,
                                     chunk_size=chunk_size, ascent=ascent, device=chosen, progress=True)
    for measurement in measurements:
        click.echo("\n".join(measurement.summary()))


@main.command("hessian")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--n-examples", type=click.IntRange(min=1), default=None,
              help="Samples of the split, drawn with --seed (default 1024, or all if fewer).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--trace", is_flag=True, help="Hessian trace (the default when nothing else is asked).")
@click.option("--eigenvalues", type=click.IntRange(min=0), default=0, metavar="K",
              help="The K largest eigenvalues (Lanczos).")
@click.option("--density", is_flag=True, help="Eigenvalue density (stochastic Lanczos quadrature).")
@click.option("--n-probes", type=click.IntRange(min=1), default=100, show_default=True,
              help="Hessian-vector products of the trace estimate.")
@click.option("--method", type=click.Choice(["hutchinson", "hutch++"]), default="hutchinson", show_default=True)
@click.option("--lanczos-steps", type=click.IntRange(min=2), default=100, show_default=True,
              help="Lanczos iterations (Hessian-vector products) for --eigenvalues and --density.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the samples, probes and Lanczos starts.")
@trust_option
@device_options
def hessian_command(runs, dataset, data_path, split, n_examples, batch_size, trace, eigenvalues, density, n_probes,
                    lanczos_steps, method, seed, device, threads):
    """Hessian trace, top eigenvalues and spectral density of every member of each RUN.

    Rows: hessian/trace (per member and its mean over members), hessian/eigenvalue (column rank),
    hessian/density (column grid_index; the grid point in column eigenvalue). Stored rows are reused.
    """
    from ensembles.studies.measurements import measure_hessian

    chosen = resolve_device(device, threads)
    measurements = measure_hessian(runs, dataset=dataset, root=data_path, split=split, n_examples=n_examples,
                                   batch_size=batch_size, trace=trace or None, eigenvalues=eigenvalues,
                                   density=density, n_probes=n_probes, method=method, seed=seed,
                                   lanczos_steps=lanczos_steps, device=chosen, progress=True)
    for measurement in measurements:
        click.echo("\n".join(measurement.summary()))


@main.command("fisher")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--n-examples", type=click.IntRange(min=1), default=None, help="The first N samples (default all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@trust_option
@device_options
def fisher_command(runs, dataset, data_path, split, n_examples, batch_size, device, threads):
    """Per-sample sharpness (trace of each sample's Fisher) of every member of each RUN.

    Writes fisher/member-<i>-<split>.npy in the run folder (entry j = sample j of the split) and rows
    fisher/mean, fisher/q50, q90, q99 and fisher/max. Stored results are reused.
    """
    from ensembles.studies.measurements import measure_fisher

    chosen = resolve_device(device, threads)
    measurements = measure_fisher(runs, dataset=dataset, root=data_path, split=split, n_examples=n_examples,
                                  batch_size=batch_size, chunk_size=batch_size, device=chosen, progress=True)
    for measurement in measurements:
        click.echo("\n".join(measurement.summary()))


@main.command("connectivity")
@click.argument("runs", nargs=-1, required=True, type=RunFolder())
@data_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--n-examples", type=click.IntRange(min=1), default=None, help="The first N samples (default all).")
@click.option("--alphas", type=click.IntRange(min=2), default=21, show_default=True,
              help="Evenly spaced points on each linear path, ends included.")
@click.option("--plane", is_flag=True, help="Also the loss plane through members 0, 1, 2.")
@click.option("--grid", type=click.IntRange(min=2), default=21, show_default=True, help="Plane points per axis.")
@click.option("--bn-reset/--no-bn-reset", default=True, show_default=True,
              help="Recompute BatchNorm statistics at every point (from training data) or interpolate them.")
@click.option("--bn-examples", type=click.IntRange(min=2), default=2048, show_default=True,
              help="Training samples (no augmentation, drawn with --seed) for the BatchNorm statistics.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the draw of the BatchNorm samples.")
@click.option("--align", default="none", show_default=True,
              help="Permute members to match member 0 first: none, weight (Git Re-Basin weight matching) or "
                   "activation (matching on the BatchNorm samples); a comma list such as weight,none measures each. "
                   "Any model: the zoo's permutation groups are written by hand, others' traced from the graph.")
@trust_option
@device_options
def connectivity_command(runs, dataset, data_path, split, n_examples, alphas, plane, grid, bn_reset, bn_examples,
                         batch_size, seed, align, device, threads):
    """Linear paths and loss barriers between every pair of members of each RUN (and the plane).

    Rows per pair: connectivity/loss and connectivity/accuracy (column alpha), connectivity/barrier,
    connectivity/barrier_alpha and the pair connectivity connectivity/q and q_loss (our reconstruction of
    Lion et al. 2024's q_pair: the worst fraction of the chord between the ends' accuracies, or losses,
    the path keeps); per ensemble connectivity/q_bar and q_loss_bar, their means over the pairs; with
    --plane, plane/loss and plane/accuracy (columns u_index, v_index, u, v).
    Aligned rows have the settings alignment and aligned_to (the reference, member 0), and for a
    model outside the zoo align_spec (a digest of its traced permutation groups). Stored rows are reused.
    """
    from ensembles.studies.measurements import measure_connectivity

    chosen = resolve_device(device, threads)
    measurements = measure_connectivity(runs, dataset=dataset, root=data_path, split=split, n_examples=n_examples,
                                        alphas=alphas, plane=plane, grid=grid, bn_reset=bn_reset,
                                        bn_examples=bn_examples, batch_size=batch_size, seed=seed, align=align,
                                        device=chosen, progress=True)
    for measurement in measurements:
        click.echo("\n".join(measurement.summary()))


# -- commands end --


if __name__ == "__main__":
    sys.exit(main())
