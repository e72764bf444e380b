"""How many CPUs this process may use: one answer for the command line (OpenMP threads before torch
loads), the sweep (threads per local job) and the quickstart (jobs per core).

The answer is the process's affinity mask (``os.sched_getaffinity``; ``os.cpu_count`` where there is
none), bounded by the CPU quota of its control group, rounded up: under cgroup v2 the ``cpu.max``
file (``"<quota> <period>"`` or ``"max <period>"``), under cgroup v1 ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` (quota -1: none). A group is limited by every group above it too, so the
tightest quota from the process's own group up to the root of its hierarchy counts. Where the
hierarchies are mounted, and which group the process is in, come from ``/proc/self/mountinfo`` and
``/proc/self/cgroup`` (see the kernel's Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/cgroups.rst);
inside a container whose own group is the root of what it sees, the mount's root files hold its quota.

Imports nothing heavy: the command line asks before torch is loaded.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["usable_cpus", "cgroup_cpu_quota"]

#: Where the kernel describes this process's mounts and control groups (tests point it elsewhere).
PROC_SELF = Path("/proc/self")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, bounded by its control groups' CPU
    quota (rounded up); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota() -> float | None:
    """The CPU time per period (in CPUs) the control groups of this process allow, the tightest of
    its cgroup v1 ``cpu`` and cgroup v2 hierarchies; None without a quota or without cgroups."""
    try:
        mounts = (PROC_SELF / "mountinfo").read_text().splitlines()
        memberships = (PROC_SELF / "cgroup").read_text().splitlines()
    except OSError:
        return None
    groups = {}  # "v2", or the v1 hierarchy holding the cpu controller -> the process's group path
    for line in memberships:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            groups["v2"] = path
        elif "cpu" in controllers.split(","):
            groups["v1"] = path
    quotas = []
    for line in mounts:
        mount = _cgroup_mount(line)
        if mount is None or mount[0] not in groups:
            continue
        version, root, point = mount
        quotas += [quota for folder in _folders_up(point, root, groups[version])
                   if (quota := _quota(folder, version)) is not None]
    return min(quotas) if quotas else None


def _cgroup_mount(line: str) -> tuple[str, str, Path] | None:
    """``(version, root of the hierarchy mounted, mount point)`` of a mountinfo line that mounts
    cgroup v2 or the v1 hierarchy with the cpu controller; None for any other line."""
    fields = line.split()
    if "-" not in fields or len(fields) < 5:
        return None
    separator = fields.index("-")
    kind = fields[separator + 1] if len(fields) > separator + 1 else ""
    options = fields[separator + 3].split(",") if len(fields) > separator + 3 else []
    root, point = (_unescape(field) for field in fields[3:5])
    if kind == "cgroup2":
        return "v2", root, Path(point)
    if kind == "cgroup" and "cpu" in options:
        return "v1", root, Path(point)
    return None


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    for code, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, character)
    return text


def _folders_up(point: Path, root: str, group: str) -> list[Path]:
    """The process's group folder under the mount point and every folder above it up to the mount
    point. A group outside the mounted root (another namespace's path) is read at the mount point."""
    inside = Path(group) == Path(root) or Path(root) in Path(group).parents
    folder = point / Path(group).relative_to(root) if inside else point
    folders = [folder]
    while folders[-1] != point and point in folders[-1].parents:
        folders.append(folders[-1].parent)
    return folders


def _quota(folder: Path, version: str) -> float | None:
    """The quota (CPUs) one group folder sets, None when it sets none or cannot be read."""
    try:
        if version == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            quota = -1 if quota == "max" else int(quota)
        else:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = (folder / "cpu.cfs_period_us").read_text()
        period = int(period)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
