"""The viewer's slide list pages through a large cohort: 50 rows (and thumbnails) at a time, on the open slide's page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.bench._scale_pages import make_page_cohort

ROOT = Path(__file__).resolve().parents[1]


def test_list_pages_follow_the_open_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = make_page_cohort(tmp_path / "big", n=120)
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    monkeypatch.setenv("SLIDELENS_DEMO_DIR", str(tmp_path / "no-demo"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["slide"] = "10075"  # the 76th slide: page 2 of 3
    at.switch_page("pages/viewer.py").run()
    assert not at.exception
    pager = at.number_input(key="viewer_page")
    assert pager.value == 2 and "of 3" in pager.label
    shown = at.dataframe[0].value
    assert len(shown) == 50 and "10075" in set(shown["slide"])
    pager.set_value(3).run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert len(shown) == 20 and set(shown["slide"]) == {str(10000 + k) for k in range(100, 120)}
    assert at.query_params["slide"] in ("10075", ["10075"])  # paging never opens another slide
