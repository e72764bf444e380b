"""Writing files so that nothing is lost: every write goes to a temporary file in the same folder
and is renamed over the target, so a reader sees the old file or the new one, never half of one.
Also what makes a folder a run folder (its ``run.json``), checkable without importing torch."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from landscape.errors import InputError

RUN_FILE = "run.json"  # what makes a folder a run folder


#: What the file system says when it refuses a write for want of room or rights, by errno.
WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large",
                  errno.EROFS: "read-only file system", getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}
# Libraries that wrap the OS error keep its number in their text: safetensors (Rust) "(os error 27)",
# pyarrow "[errno 27]"; else its standard message.
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def write_failure(error: BaseException) -> int | None:
    """The errno of :data:`WRITE_FAILURES` behind ``error`` (an OSError, or a library's error that
    wraps one and keeps its number or message), else None."""
    code = getattr(error, "errno", None)
    if code in WRITE_FAILURES:
        return code
    text = str(error)
    for match in _ERRNO_IN_TEXT.finditer(text):
        number = int(match.group(1) or match.group(2))
        if number in WRITE_FAILURES:
            return number
    for number in WRITE_FAILURES:
        if os.strerror(number) in text:
            return number
    return None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    On an exception the temporary file is removed and ``target`` is left as it was. A write the
    file system refused (:data:`WRITE_FAILURES`: a full disk, a file-size limit, a read-only file
    system, a quota), however the writing library reported it, is raised as the ``OSError`` of
    that errno naming ``target``, so the command line can say in one line which file and why.
    Writers that bury the cause (torch's zip writer) should write bytes made in memory instead.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except Exception as error:
        code = write_failure(error)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(target)) from error
    finally:
        temporary.unlink(missing_ok=True)


def write_json(target: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


_digest_cache: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex, first 16 characters), cached by path, inode, size, mtime and
    ctime: file times tick coarsely, so a same-size file renamed over this one (a member saved
    again) is told apart by its inode, and one rewritten in place by its ctime."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
        _digest_cache[key] = digest.hexdigest()[:16]
    return _digest_cache[key]


def require_run_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a run folder (holds ``run.json``), else one clear InputError.
    Needs no torch, so the command line checks its arguments before the slow import."""
    path = Path(path)
    if not (path / RUN_FILE).is_file():
        if not path.exists():
            raise InputError(f"run folder {path} does not exist")
        raise InputError(f"{path} is not a run folder (no {RUN_FILE}); make one with "
                         "`sharpdiv train` or `sharpdiv import`")
    return path


MARKER_FILE = ".sharpdiv"  # what says a folder's files were written by sharpdiv


def is_own_folder(path: str | os.PathLike) -> bool:
    """Whether sharpdiv may write into ``path``: missing, an empty folder, or holding :data:`MARKER_FILE`."""
    path = Path(path)
    if not path.exists():
        return True
    return path.is_dir() and ((path / MARKER_FILE).is_file() or not any(path.iterdir()))


def require_writable_folder(path: str | os.PathLike, force: bool = False, what: str = "") -> Path:
    """``path`` as a Path if sharpdiv may write into it (:func:`is_own_folder`); else one clear
    InputError, so a user's own files are never overwritten. ``force`` allows any folder, but never
    a file. ``what`` names the folder in the message (``"report --out"``). Call :func:`mark_folder`
    before the first write."""
    path = Path(path)
    named = f"{what} {path}" if what else str(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{named} is a file, not a folder; choose a folder path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent} is a file, so {named} cannot be made inside it; choose a folder path")
    if force or is_own_folder(path):
        return path
    found = sorted(entry.name for entry in path.iterdir())
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise InputError(f"{named} already holds files not made by sharpdiv ({shown}); choose an empty or new "
                     "folder, or pass --force to write into it anyway (same-named files are replaced)")


def mark_folder(path: str | os.PathLike, kind: str) -> None:
    """Create ``path`` if needed and mark it as made by sharpdiv (``kind``: run, report ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER_FILE).is_file():
        write_json(path / MARKER_FILE, {"made_by": "sharpdiv", "kind": kind})
