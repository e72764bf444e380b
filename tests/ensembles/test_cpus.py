"""The one answer to "how many CPUs may this process use": the affinity mask bounded by the cgroup v1
or v2 CPU quota of the process's group and every group above it, read from a fake /proc/self and a
fake cgroup tree."""
import os
from pathlib import Path

import pytest

from ensembles import cpus

V2_MOUNT = "41 31 0:38 / {point} rw,relatime - cgroup2 cgroup2 rw\n"
V1_MOUNTS = ("32 31 0:29 {root} {point} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "35 31 0:32 / {memory} rw,relatime - cgroup cgroup rw,memory\n")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake /proc/self (mountinfo, cgroup) and cgroup tree under ``tmp_path``; 8 CPUs in the mask."""
    proc = tmp_path / "proc"
    proc.mkdir()
    monkeypatch.setattr(cpus, "PROC_SELF", proc)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)

    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return tmp_path

    return write


def _v2(machine, group: str, limits: dict[str, str]):
    root = machine({})
    files = {"proc/mountinfo": V2_MOUNT.format(point=root / "cg"), "proc/cgroup": f"0::{group}\n"}
    files.update({f"cg{folder}/cpu.max": text for folder, text in limits.items()})
    machine(files)


def test_a_cgroup_v2_quota_bounds_the_affinity_rounded_up(machine):
    _v2(machine, "/", {"": "150000 100000\n"})
    assert cpus.cgroup_cpu_quota() == 1.5
    assert cpus.usable_cpus() == 2


def test_cgroup_v2_without_a_quota_leaves_the_affinity(machine):
    _v2(machine, "/", {"": "max 100000\n"})
    assert cpus.cgroup_cpu_quota() is None and cpus.usable_cpus() == 8


def test_a_parent_groups_quota_limits_the_groups_below_it(machine):
    _v2(machine, "/job/step", {"": "max 100000\n", "/job": "300000 100000\n", "/job/step": "max 100000\n"})
    assert cpus.usable_cpus() == 3
    _v2(machine, "/job/step", {"/job": "300000 100000\n", "/job/step": "100000 100000\n"})
    assert cpus.usable_cpus() == 1  # the tightest on the way up


def test_a_cgroup_v1_quota_bounds_the_affinity(machine):
    root = machine({})
    machine({"proc/mountinfo": V1_MOUNTS.format(root="/", point=root / "cpu", memory=root / "memory"),
             "proc/cgroup": "4:memory:/x\n3:cpu,cpuacct:/\n0::/\n",
             "cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n",
             "memory/cpu.cfs_quota_us": "100000\n", "memory/cpu.cfs_period_us": "100000\n"})  # not the cpu hierarchy
    assert cpus.cgroup_cpu_quota() == 2.0 and cpus.usable_cpus() == 2
    machine({"cpu/cpu.cfs_quota_us": "-1\n"})
    assert cpus.cgroup_cpu_quota() is None and cpus.usable_cpus() == 8


def test_a_cgroup_v1_container_reads_its_quota_at_the_mount_point(machine):
    # The host's path of the group (/docker/abc) is the root of what the container mounts.
    root = machine({})
    machine({"proc/mountinfo": V1_MOUNTS.format(root="/docker/abc", point=root / "cpu", memory=root / "memory"),
             "proc/cgroup": "3:cpu,cpuacct:/docker/abc\n",
             "cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cpus.cgroup_cpu_quota() == 0.5 and cpus.usable_cpus() == 1


def test_the_affinity_mask_bounds_a_larger_quota(machine, monkeypatch):
    _v2(machine, "/", {"": "400000 100000\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpus.usable_cpus() == 2


def test_without_cgroups_or_affinity_the_cpu_count_answers(machine, monkeypatch):
    assert cpus.cgroup_cpu_quota() is None and cpus.usable_cpus() == 8  # no /proc/self files at all
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpus.usable_cpus() == 6


def test_unreadable_quota_files_are_no_quota(machine):
    _v2(machine, "/", {"": "garbage\n"})
    assert cpus.cgroup_cpu_quota() is None and cpus.usable_cpus() == 8
    _v2(machine, "/", {"": "100000 0\n"})
    assert cpus.cgroup_cpu_quota() is None


def test_the_affinity_mask_counts_its_cpus_not_their_numbers(machine, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 9, 12}, raising=False)  # no cgroup files
    assert cpus.usable_cpus() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)  # never below one
    assert cpus.usable_cpus() == 1
