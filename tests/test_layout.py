"""House rules that keep the layering honest."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_never_imports_streamlit() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+streamlit", p.read_text(), re.M)]
    assert offenders == []


def test_core_files_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "core").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 500}
    assert big == {}
