"""Atomic writes, digests and folder ownership (ensembles.runs.files)."""
import os

import pytest

from ensembles.runs import files
from ensembles.runs.files import MARKER_FILE, atomic_path, mark_folder, require_writable_folder
from landscape.errors import InputError


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_require_own_folder_and_its_marker(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"train --out .*user already holds files not made by sharpdiv \(notes\.txt\)"):
        require_writable_folder(user, False, "train --out")
    assert require_writable_folder(user, True, "train --out") == user
    mark_folder(user, "test")
    assert require_writable_folder(user, False, "train --out") == user
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        require_writable_folder(tmp_path / "file", True, "report --out")


def test_file_digest_sees_a_replaced_file_of_same_size_and_mtime(tmp_path):
    """A member rewritten (temporary file + rename, as save_member does) with the same size within one
    timestamp tick must not keep the old digest: rows and cached logits of the old weights would pass."""
    target = tmp_path / "member-0.safetensors"
    target.write_bytes(b"a" * 64)
    before = files.file_digest(target)
    stat = target.stat()
    replacement = tmp_path / ".member-0.tmp"
    replacement.write_bytes(b"b" * 64)
    os.replace(replacement, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a coarse clock: the same mtime
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    assert files.file_digest(target) != before


def test_writable_folder_rules(tmp_path):
    assert require_writable_folder(tmp_path / "new") == tmp_path / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    require_writable_folder(empty)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        require_writable_folder(tmp_path / "file", force=True)
    used = tmp_path / "used"
    used.mkdir()
    (used / "README.md").write_text("mine")
    with pytest.raises(InputError, match="README.md"):
        require_writable_folder(used)
    require_writable_folder(used, force=True)
    (used / MARKER_FILE).write_text("{}")
    require_writable_folder(used)
