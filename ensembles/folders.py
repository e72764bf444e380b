"""Folders sharpdiv writes into: only its own, so a user's files are never replaced.

A folder is sharpdiv's when sharpdiv made it (it holds the marker file ``.sharpdiv``, written by
:func:`mark_own_folder`) or when it is empty. Any other folder is refused by
:func:`require_own_folder` unless the user forces it.
"""
from __future__ import annotations

import os
from pathlib import Path

from landscape.errors import InputError

__all__ = ["MARKER", "is_own_folder", "mark_own_folder", "require_own_folder"]

#: The file that says sharpdiv made a folder and may replace the files it wrote there.
MARKER = ".sharpdiv"


def is_own_folder(path: str | os.PathLike) -> bool:
    """Whether sharpdiv may write into ``path``: it does not exist yet, is an empty folder, or
    holds sharpdiv's marker."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return (path / MARKER).is_file() or not any(path.iterdir())


def require_own_folder(path: str | os.PathLike, force: bool, what: str) -> Path:
    """``path`` as a Path if sharpdiv may write into it (:func:`is_own_folder`, or ``force``);
    otherwise one InputError naming the folder and the fix. ``what`` names it in the message,
    e.g. ``"report --out"``. A file where the folder belongs is refused even with ``force``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; give a folder")
    if not force and not is_own_folder(path):
        shown = sorted(entry.name for entry in path.iterdir())
        listed = ", ".join(shown[:3]) + (", ..." if len(shown) > 3 else "")
        raise InputError(f"{what} {path} already holds files sharpdiv did not write ({listed}); give a new or "
                         "empty folder, or pass --force to write into it anyway (same-named files are replaced)")
    return path


def mark_own_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and mark it as sharpdiv's (the marker file ``.sharpdiv``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.is_file():
        marker.write_text("This folder was written by sharpdiv, which may replace the files it wrote here.\n")
    return path
