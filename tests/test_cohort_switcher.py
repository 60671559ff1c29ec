"""Opening another cohort by path: a bad path gives one line and leaves the current cohort working."""

from __future__ import annotations

from pathlib import Path

import pytest
from _review_data import make_review_cohort
from streamlit.testing.v1 import AppTest

from core.cohort.cohort_file import checked_cohort_file
from core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad, why", [("/etc/passwd", "invalid TOML"), ("/no/such/cohort.toml", "not found"),
                                      ("pyproject.toml", "not a cohort file")])
def test_checked_cohort_file_refuses_what_is_not_a_cohort(bad: str, why: str) -> None:
    with pytest.raises(InputError, match=why) as exc:
        checked_cohort_file(str(ROOT / bad) if not bad.startswith("/") else bad)
    assert "\n" not in str(exc.value)


def test_checked_cohort_file_takes_a_folder_or_its_toml(tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    assert checked_cohort_file(str(toml)) == toml
    assert checked_cohort_file(f"  {toml.parent}  ") == toml


def test_a_bad_path_leaves_the_current_cohort_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = make_review_cohort(tmp_path / "study")
    toml.write_text(toml.read_text().replace('name = "review-test"', 'name = "first-study"'))
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    monkeypatch.setenv("SLIDELENS_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and "first-study" in at.title[0].value.replace("\\", "")
    at.text_input(key="cohort_path_input").input("/etc/passwd")
    at.button[[b.label for b in at.button].index("Open")].click().run()
    # (AppTest drops the sidebar's elements after a rerun under st.navigation, so the message itself is checked in
    # the browser test; here: no exception, the session keeps its cohort, and every page still runs on it)
    assert not at.exception
    assert "cohort_path" not in at.session_state
    for page in ("pages/viewer.py", "pages/analysis.py", "pages/review.py", "pages/home.py"):
        at.switch_page(page).run()
        assert not at.exception, page
        assert not [e.value for e in at.error], page
    assert "first-study" in at.title[0].value.replace("\\", "")
