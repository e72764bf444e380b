"""Runs that read other runs: a setting declared as a reference names another run folder of the
sweep ({field} placeholders filled from the job's own values); the sweep trains the runs it reads
first (dependency waves), skips a job whose run to read failed, and keeps an existing run only
while the run it read still holds what it read then.

No training setting of the package is a reference yet, so the tests declare one, ``learn_from``
(role "teacher"), on a subclass of the settings, as a new hyper-parameter would be declared. Its
record of what it read, ``teacher = {"path", "members"}`` in run.json, is written by the stand-in
trainer of these tests (and by :meth:`WithTeacher.run_fields` when the real trainer runs)."""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.runs.files import file_digest, mark_folder
from ensembles.studies import sweep
from ensembles.training import trainer
from ensembles.training.settings import TrainingSettings, setting
from landscape.errors import InputError

REPOSITORY = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class WithTeacher(TrainingSettings):
    learn_from: str | None = setting(None, kind="path", optional=True, reference="teacher", short="from-",
                                     wanted_text="a run folder", help="The run this one learns from.")

    def run_fields(self) -> dict:
        """run.json's fields, with the record of what this run read once its reference is resolved
        to a folder (as the sweep hands it to the trainer): what a trainer that reads a teacher keeps."""
        values = super().run_fields()
        if self.learn_from is not None and os.path.isabs(self.learn_from):
            values["teacher"] = {"path": self.learn_from, "members": sweep.reference_content(self.learn_from)}
        return values


def _plan(text: str) -> sweep.Sweep:
    return sweep.parse_sweep(text, source="s.toml", settings_class=WithTeacher)


def _error(text: str) -> str:
    with pytest.raises(InputError) as caught:
        _plan(text)
    assert "\n" not in str(caught.value)
    return str(caught.value)


BASE = '[base]\ndataset = "digits"\nmodel = "small_cnn"\nepochs = 2\n'

STUDENTS = BASE + """
[[grid]]                            # the teachers
seeds = [[1, 2], [3, 4]]
[[grid]]                            # each learns from the teacher of its own seeds
seeds = [[1, 2], [3, 4]]
learn_from = ["sgd-s{seeds}"]
"""
TEACHERS = ["sgd-s1.2", "sgd-s3.4"]
LEARNERS = ["sgd-from-sgd-s1.2-s1.2", "sgd-from-sgd-s3.4-s3.4"]


# -- the plan ---------------------------------------------------------------------------------------


def test_a_reference_is_filled_from_the_jobs_own_values_and_read_runs_come_first():
    plan = _plan(STUDENTS)
    assert [job.name for job in plan.jobs] == TEACHERS + LEARNERS
    assert [job.settings.learn_from for job in plan.jobs] == [None, None, "sgd-s1.2", "sgd-s3.4"]
    assert [dict(job.references) for job in plan.jobs] == [{}, {}, {"learn_from": "sgd-s1.2"},
                                                          {"learn_from": "sgd-s3.4"}]
    assert [job.needs for job in plan.jobs] == [(), (), ("sgd-s1.2",), ("sgd-s3.4",)]
    assert [[job.name for job in wave] for wave in plan.waves] == [TEACHERS, LEARNERS]
    table = sweep.plan_table(plan).set_index("run")
    assert list(table["wave"]) == [1, 1, 2, 2]
    assert list(table["reads"]) == ["-", "-", "sgd-s1.2", "sgd-s3.4"]
    assert sweep.plan_notes(plan) == ["2 waves: a run is trained after the runs it reads, and skipped if one fails"]


def test_placeholders_take_the_values_as_folder_names_spell_them():
    text = BASE + '[grid]\nmethod = ["sam"]\nrho = [0.05]\nwidth = [8]\nreference_compatible = [true]\n' \
                  'learn_from = ["{method}-rho{rho}-w{width}-{reference_compatible}-s{seeds}-{dataset}"]\n'
    (job,) = _plan(text).jobs
    # the switch is spelled by its words, only SharpBalance uses it, so SAM holds it off: "paper"
    assert job.references == {"learn_from": "sam-rho0.05-w8-paper-s13.17.27-digits"}
    assert job.outside == ("sam-rho0.05-w8-paper-s13.17.27-digits",)  # no job of the sweep has that name


def test_a_bad_reference_is_one_line_naming_the_grid_point():
    grid = BASE + "[grid]\nwidth = [8]\nlearn_from = [{}]\n"
    assert _error(grid.format('"sgd-s{seed}"')) == (
        "s.toml: grid point width=8, learn_from=sgd-s{seed}: learn_from 'sgd-s{seed}': {seed} is not a setting to "
        "fill in; use a setting's name, e.g. {seeds}")
    assert _error(grid.format('"sgd-s{seeds"')).endswith(
        "learn_from 'sgd-s{seeds' has an unmatched brace; a placeholder is {field}, e.g. {seeds}")
    assert _error(grid.format('"{learn_from}"')).endswith("{learn_from} is not a setting to fill in; use a "
                                                          "setting's name, e.g. {seeds}")
    for outside in ('"../other-sweep/sgd-s{seeds}"', '"/runs/sgd"', '"."', '""'):
        assert "is not a run folder under the sweep root; name one relative to the root" in _error(grid.format(outside))
    assert _error(grid.format("3")) == ("s.toml: [grid] learn_from (line 7): 3 is not a valid learn_from; it must be "
                                        "a run folder")


def test_a_run_that_reads_itself_is_refused_naming_it():
    # in [base], not swept: the reference is not part of the name, so it can name the job itself
    text = BASE + 'learn_from = "sgd-w{width}-s1.2"\n[grid]\nwidth = [8]\nseeds = [[1, 2]]\n'
    assert _error(text) == ("s.toml: run sgd-w8-s1.2 reads itself (learn_from = 'sgd-w8-s1.2'); a run can only "
                            "read runs trained before it")


def test_runs_that_read_each_other_are_refused_naming_the_cycle():
    text = (BASE + 'learn_from = "sgd-w{batch_size}-b{width}-s1.2"\nseeds = [1, 2]\n'
            "[[grid]]\nwidth = [8]\nbatch_size = [16]\n[[grid]]\nwidth = [16]\nbatch_size = [8]\n")
    assert _error(text) == ("s.toml: runs sgd-w8-b16-s1.2 -> sgd-w16-b8-s1.2 -> sgd-w8-b16-s1.2 read each other in "
                            "a cycle; a run can only read runs trained before it")


def test_a_reference_to_no_job_of_the_sweep_must_exist_under_the_root(tmp_path, stub):
    plan = _plan(BASE + '[grid]\nseeds = [[1, 2]]\nlearn_from = ["old-teacher"]\n')
    (job,) = plan.jobs
    assert job.needs == () and job.outside == ("old-teacher",) and len(plan.waves) == 1
    assert list(sweep.plan_table(plan)["reads"]) == ["old-teacher (under ROOT)"]
    assert sweep.plan_notes(plan) == ["sgd-from-old-teacher-s1.2 reads old-teacher, which is not a job of this sweep: "
                                      "it must be a finished run folder under ROOT when the sweep runs"]
    root = tmp_path / "root"
    with pytest.raises(InputError) as caught:
        sweep.run_sweep(plan, root, device="cpu")
    assert str(caught.value) == (f"sgd-from-old-teacher-s1.2 reads its teacher {root / 'old-teacher'}, which no job "
                                 "of this sweep trains and which is no finished run folder; train it there first")
    assert not root.exists() and stub.calls == []  # refused before anything was made
    _stub_run(root / "old-teacher", WithTeacher(dataset="digits", model="small_cnn", epochs=2, seeds=(5,)))
    result = sweep.run_sweep(plan, root, device="cpu")
    assert not result.failures and stub.calls == [("sgd-from-old-teacher-s1.2", str(root.resolve() / "old-teacher"))]


# -- running: a stand-in trainer that records what it read ----------------------------------------


def _stub_run(out: Path, settings) -> None:
    """A finished run folder of ``settings`` with one small weights file per member (what a
    trainer leaves), its run.json holding the settings' fields (with the teacher record)."""
    mark_folder(out, "run")
    run_folder.create_run(out, dataset=settings.dataset, num_classes=10, model=settings.model, method=settings.method,
                          seeds=settings.seeds, keep=settings.keep, **settings.run_fields())
    for index, seed in enumerate(settings.seeds):
        run_folder.save_member(out, index, {"weight": torch.full((2,), float(seed))}, seed=seed)


class _Stub:
    """Stands in for trainer.train: records (run, resolved reference) and, for a reference, that
    the run it reads was finished; fails for the runs named in ``failing``."""

    def __init__(self):
        self.calls, self.failing = [], set()

    def __call__(self, out, settings, **options):
        out = Path(out)
        self.calls.append((out.name, settings.learn_from))
        if out.name in self.failing:
            raise RuntimeError("out of memory")
        if settings.learn_from is not None:
            assert sweep._finished(Path(settings.learn_from))
        _stub_run(out, settings)
        return []


@pytest.fixture
def stub(monkeypatch):
    stand_in = _Stub()
    monkeypatch.setattr(trainer, "train", stand_in)
    return stand_in


def test_jobs_run_in_waves_and_each_reads_the_run_it_names(tmp_path, stub, monkeypatch):
    plan = _plan(STUDENTS)
    root = tmp_path / "root"
    messages = []
    result = sweep.run_sweep(plan, root, device="cpu", echo=messages.append)
    assert not result.failures and not result.skipped
    assert [outcome.job for outcome in result.outcomes] == TEACHERS + LEARNERS
    absolute = root.resolve()
    assert stub.calls == [("sgd-s1.2", None), ("sgd-s3.4", None), (LEARNERS[0], str(absolute / "sgd-s1.2")),
                          (LEARNERS[1], str(absolute / "sgd-s3.4"))]
    assert "wave 2 of 2: 2 job(s)" in messages
    for learner, teacher in zip(LEARNERS, TEACHERS):
        recorded = run_folder.read_config(root / learner)["teacher"]
        assert recorded == {"path": str(absolute / teacher), "members": sweep.reference_content(root / teacher)}
        assert len(recorded["members"]) == 2 and "missing" not in recorded["members"]

    # run again, from another working directory and with the root spelled relative: everything is kept
    monkeypatch.chdir(tmp_path)
    again = sweep.run_sweep(plan, "root", device="cpu")
    assert len(stub.calls) == 4 and [s.action for o in again.outcomes for s in o.steps] == ["kept"] * 4
    status = sweep.sweep_status(plan, "root").set_index("run")
    assert list(status["training"]) == ["done"] * 4


def test_a_teacher_retrained_since_makes_its_student_a_conflict_never_kept(tmp_path, stub):
    plan = _plan(STUDENTS)
    root = tmp_path / "root"
    sweep.run_sweep(plan, root, device="cpu")
    student = plan.jobs[2]
    settings = sweep.job_settings(student, root)
    assert sweep._training_state(root / student.name, settings) == "done"

    run_folder.save_member(root / "sgd-s1.2", 1, {"weight": torch.full((2,), 7.0)}, seed=2)  # retrained member
    message = (f"{root / student.name}: its teacher {root.resolve() / 'sgd-s1.2'} changed since this run was "
               "trained; remove it to retrain")
    with pytest.raises(InputError) as caught:
        sweep._training_state(root / student.name, settings)
    assert str(caught.value) == message
    with pytest.raises(InputError) as caught:  # the sweep stops before doing anything
        sweep.run_sweep(plan, root, device="cpu")
    assert str(caught.value) == message and len(stub.calls) == 4
    status = sweep.sweep_status(plan, root).set_index("run")
    assert list(status["training"]) == ["done", "done", "conflict", "done"]

    shutil.rmtree(root / "sgd-s1.2")
    with pytest.raises(InputError, match=r"was trained from the teacher .*sgd-s1\.2, which is no run folder now"):
        sweep._training_state(root / student.name, settings)


def test_a_run_that_records_nothing_of_its_teacher_is_kept_only_unfinished(tmp_path, stub):
    plan = _plan(STUDENTS)
    root = tmp_path / "root"
    sweep.run_sweep(plan, root, device="cpu")
    student = plan.jobs[2]
    folder, settings = root / student.name, sweep.job_settings(student, root)
    config = run_folder.read_config(folder)
    run_folder.update_config(folder, teacher=None)
    with pytest.raises(InputError, match=r"records no teacher digests in its run\.json, so it cannot be told apart "
                                         r"from a run of another teacher; remove it to retrain$"):
        sweep._training_state(folder, settings)
    # unfinished: the trainer's resume checks its teacher itself
    run_folder.update_config(folder, members=[{**config["members"][0], "status": "pending"}, config["members"][1]])
    assert sweep._training_state(folder, settings) == "partial"


def test_a_failed_run_skips_the_runs_that_read_it_and_says_so(tmp_path, stub):
    plan = _plan(STUDENTS)
    root = tmp_path / "root"
    assert list(sweep.sweep_status(plan, root)["training"]) == [
        "not started", "not started", "waiting for sgd-s1.2", "waiting for sgd-s3.4"]
    stub.failing = {"sgd-s1.2"}
    messages = []
    result = sweep.run_sweep(plan, root, device="cpu", retries=1, echo=messages.append)
    assert result.failures == {"sgd-s1.2": "RuntimeError: out of memory"}
    assert result.skipped == {LEARNERS[0]: "skipped: its teacher sgd-s1.2 failed"}
    assert [outcome.job for outcome in result.outcomes] == ["sgd-s3.4", LEARNERS[1]]
    assert [name for name, _ in stub.calls] == ["sgd-s1.2", "sgd-s3.4", "sgd-s1.2", LEARNERS[1]]  # one retry
    assert f"{LEARNERS[0]}: skipped: its teacher sgd-s1.2 failed" in messages
    assert not (root / LEARNERS[0]).exists()
    skipped = [record for record in sweep.read_log(root) if record["action"] == "skipped"]
    assert [(r["job"], r["step"], r["reason"]) for r in skipped] == [
        (LEARNERS[0], "train", "skipped: its teacher sgd-s1.2 failed")]
    assert list(sweep.sweep_status(plan, root)["training"]) == [
        "not started", "done", "skipped: its teacher sgd-s1.2 failed", "done"]

    # a run that reads a skipped run is skipped too
    chain = _plan(STUDENTS + '[[grid]]\nseeds = [[1, 2]]\nlearn_from = ["sgd-from-sgd-s{seeds}-s{seeds}"]\n')
    assert [len(wave) for wave in chain.waves] == [2, 2, 1]
    result = sweep.run_sweep(chain, tmp_path / "chain", device="cpu", retries=0)
    assert result.skipped == {LEARNERS[0]: "skipped: its teacher sgd-s1.2 failed",
                              "sgd-from-sgd-from-sgd-s1.2-s1.2-s1.2": f"skipped: its teacher {LEARNERS[0]} was skipped"}


def test_sweep_run_reports_skipped_jobs_and_fails(tmp_path, stub, monkeypatch):
    file = tmp_path / "students.toml"
    file.write_text(STUDENTS)
    monkeypatch.setattr(sweep, "read_sweep", lambda path: _plan(Path(path).read_text()))
    stub.failing = {"sgd-s3.4"}
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(tmp_path / "root"), "--retries",
                                           "0", "--no-report"])
    assert result.exit_code == 1
    assert "2 of 4 jobs done (2 trained now, 0 already trained); 1 failed, 1 skipped" in result.stdout
    assert f"sharpdiv: job {LEARNERS[1]} skipped: its teacher sgd-s3.4 failed" in result.stderr
    plan = CliRunner().invoke(cli.main, ["sweep", "plan", str(file)])
    assert plan.exit_code == 0 and "2 waves: a run is trained after the runs it reads" in plan.output
    assert "wave" in plan.output.splitlines()[0] and "reads" in plan.output.splitlines()[0]


def test_the_debug_executor_runs_the_waves_in_order(tmp_path, stub):
    result = sweep.run_sweep(_plan(STUDENTS), tmp_path / "root", executor="debug", device="cpu")
    assert not result.failures and [name for name, _ in stub.calls] == TEACHERS + LEARNERS
    assert set(result.job_ids) == set(TEACHERS + LEARNERS)


def test_a_cluster_gets_one_array_per_wave_and_none_for_the_skipped(tmp_path, monkeypatch):
    arrays = []

    def submit(todo, *args):  # what one SLURM array of these jobs would end with
        arrays.append([job.name for job in todo])
        return {job.name: (None, "TimeoutError: node lost") if job.name == "sgd-s3.4" else
                (sweep.JobOutcome(job=job.name, path=tmp_path, steps=(), seconds=0.0), None) for job in todo}

    monkeypatch.setattr(sweep, "_run_submitit", submit)
    result = sweep.run_sweep(_plan(STUDENTS), tmp_path / "root", executor="slurm", retries=1)
    assert arrays == [TEACHERS, ["sgd-s3.4"], LEARNERS[:1]]  # wave 1, its retry, wave 2 without the skipped
    assert result.failures == {"sgd-s3.4": "TimeoutError: node lost"}
    assert result.skipped == {LEARNERS[1]: "skipped: its teacher sgd-s3.4 failed"}


def test_without_waiting_only_jobs_whose_runs_to_read_are_finished_are_submitted(tmp_path, stub, monkeypatch):
    submitted = []

    def submit(todo, root, *args):
        submitted.append([job.name for job in todo])

    monkeypatch.setattr(sweep, "_run_submitit", submit)  # no cluster here
    plan = _plan(STUDENTS)
    root = tmp_path / "root"
    first = sweep.run_sweep(plan, root, executor="slurm", wait=False)
    assert submitted == [TEACHERS] and not first.waited
    assert first.waiting == {LEARNERS[0]: ("sgd-s1.2",), LEARNERS[1]: ("sgd-s3.4",)}
    sweep.run_job(plan.jobs[0], root)  # the first teacher finishes
    second = sweep.run_sweep(plan, root, executor="slurm", wait=False)
    assert submitted[-1] == TEACHERS + LEARNERS[:1] and second.waiting == {LEARNERS[1]: ("sgd-s3.4",)}


# -- end to end: real training in submitit's local processes ---------------------------------------

TINY = """
[base]
dataset = "digits"
model = "small_cnn"
width = 4
train_samples = 64
epochs = 1
batch_size = 32
keep = "last"
[[grid]]
seeds = [[13], [17]]
[[grid]]
seeds = [[13], [17]]
learn_from = ["sgd-s{seeds}"]
"""


@pytest.fixture
def importable(monkeypatch):
    """The job's settings class lives in this test module: the job processes import it from here."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))


def test_a_two_wave_sweep_trains_in_local_processes_and_the_second_wave_reads_the_first(tmp_path, importable):
    plan = _plan(TINY)
    assert [[job.name for job in wave] for wave in plan.waves] == [["sgd-s13", "sgd-s17"],
                                                                    ["sgd-from-sgd-s13-s13", "sgd-from-sgd-s17-s17"]]
    root = tmp_path / "root"
    result = sweep.run_sweep(plan, root, executor="local", jobs=2, retries=0, device="cpu", poll_seconds=0.5)
    assert not result.failures and not result.skipped and len(result.outcomes) == 4
    log = [record for record in sweep.read_log(root) if record["step"] == "train"]
    assert [record["action"] for record in log] == ["trained"] * 4
    assert {record["job"] for record in log[:2]} == {"sgd-s13", "sgd-s17"}  # the second wave after the first
    assert {record["job"] for record in log[2:]} == {"sgd-from-sgd-s13-s13", "sgd-from-sgd-s17-s17"}
    assert os.getpid() not in {record["pid"] for record in log} and len({record["pid"] for record in log}) == 4
    for seeds in ("13", "17"):
        teacher, student = root / f"sgd-s{seeds}", root / f"sgd-from-sgd-s{seeds}-s{seeds}"
        config = run_folder.read_config(student)
        assert config["learn_from"] == str(teacher.resolve()) and run_folder.finished_members(config) == [0]
        # the student's process read the teacher's finished weights
        assert config["teacher"] == {"path": str(teacher.resolve()), "members": sweep.reference_content(teacher)}
        assert sweep.reference_content(teacher) == [file_digest(teacher / "member-0.safetensors")]
    again = sweep.run_sweep(plan, root, device="cpu")  # here, one at a time: everything is kept
    assert [step.action for outcome in again.outcomes for step in outcome.steps] == ["kept"] * 4


def test_a_failed_first_wave_skips_the_second_in_local_processes(tmp_path, importable):
    # CIFAR-10 is not under the data path, so the teacher fails in its process; its student never starts
    text = TINY.replace('dataset = "digits"', 'dataset = "cifar10"').replace("[[13], [17]]", "[[13]]")
    plan = _plan(text)
    root = tmp_path / "root"
    (tmp_path / "no-data").mkdir()
    result = sweep.run_sweep(plan, root, executor="local", jobs=2, retries=0, device="cpu", poll_seconds=0.5,
                             data_path=tmp_path / "no-data")
    assert list(result.failures) == ["sgd-s13"]
    assert result.failures["sgd-s13"].startswith("landscape.errors.InputError: CIFAR-10 not found at ")  # its one line
    assert result.skipped == {"sgd-from-sgd-s13-s13": "skipped: its teacher sgd-s13 failed"}
    assert result.outcomes == () and not (root / "sgd-from-sgd-s13-s13").exists()
    assert list(sweep.sweep_status(plan, root)["training"]) == ["not started", "skipped: its teacher sgd-s13 failed"]
