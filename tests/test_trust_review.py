"""Review of issues 14/16/19: numbers that could belong to other weights, data or settings."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ensembles.runs import files
from reports import collect


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
