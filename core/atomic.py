"""Atomic file writes: the content goes to a temp file in the target's folder, which replaces the target only once
it is complete, so a crash or an error never leaves a half-written file where a reader looks (the temp file is
removed on any error)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", prefix: str | None = None,
                mode: int | None = 0o644) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (``<prefix>XXXX<suffix>``, prefix ``.<name>.`` by default); when the block
    ends without an error it gets ``mode`` (mkstemp makes 0600; None keeps that) and is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix,
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any, default: Callable[[Any], Any] | None = None,
                      indent: int | None = 2) -> None:
    """Write ``data`` as JSON (with a final newline when indented) to ``path`` atomically."""
    text = json.dumps(data, indent=indent, default=default)
    write_text_atomic(path, text + ("\n" if indent is not None else ""))
