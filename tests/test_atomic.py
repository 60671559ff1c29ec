"""core/atomic.py: a write either replaces the target whole or leaves it (and its folder) as it was."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from core.atomic import atomic_path, write_bytes_atomic, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "labels.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


def test_a_finished_write_replaces_the_file_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "manifest.json"  # the folder is made
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"b": 1, "a": [1, 2]} and target.read_text().endswith("}\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    write_bytes_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]


def test_the_temp_file_is_hidden_beside_the_target_with_the_given_suffix(tmp_path: Path) -> None:
    target = tmp_path / "wsi_001.h5"
    with atomic_path(target, suffix=".h5.tmp", prefix=".wsi_001.") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".wsi_001.") and tmp.name.endswith(".h5.tmp")
        assert not target.exists()
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x" and not tmp.exists()
