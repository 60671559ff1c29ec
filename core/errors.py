"""Errors that carry one clear line for the user: what file, what went wrong."""

from __future__ import annotations

from pathlib import Path


class SlideLensError(Exception):
    """Base error: its ``str()`` is a single line fit for a UI message or a CLI error."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class SlideError(SlideLensError):
    """A slide could not be found, opened or read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InputError(SlideLensError):
    """A user-supplied file (labels, features, model, cohort) is malformed or inconsistent."""
