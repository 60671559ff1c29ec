"""The review page with streamlit's AppTest on a tiny cohort written by the test (real SQLite, real CSVs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _review_data import make_review_cohort
from streamlit.testing.v1 import AppTest

from core.cohort.cohort_file import load_cohort
from core.review.queue import open_cohort_store

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "review.py")


def _run(monkeypatch: pytest.MonkeyPatch, toml: Path) -> AppTest:
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _plain(markdown: str) -> str:
    """What an escaped message (ui.safe.md) shows on screen."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("  \n", "\n").replace("\u2060", "")


def _shown(elements) -> list[str]:  # noqa: ANN001 - streamlit testing element lists
    return [_plain(e.value) for e in elements]


def _button(at: AppTest, label: str):  # noqa: ANN202 - a streamlit testing Button
    return next(b for b in at.button if b.label == label)


def test_queue_lists_reasons_and_first_slide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = _run(monkeypatch, make_review_cohort(tmp_path / "c"))
    table = at.dataframe[0].value
    assert table["image_id"].tolist() == ["s01", "s02", "s03"]
    assert "label issue #1" in table.iloc[0]["reasons"]
    assert at.selectbox(key="rv_slide").value == "s01"
    texts = [t.value for t in at.text]
    assert any("out-of-fold prediction suggests 'tumor'" in t for t in texts)
    at.multiselect(key="rv_sources").set_value(["outlier"]).run()
    assert at.dataframe[0].value["image_id"].tolist() == ["s02"]


def test_edit_without_name_is_refused_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _run(monkeypatch, toml)
    _button(at, "Flag outlier").click().run()
    assert not at.exception
    assert any("reviewer name is required" in e for e in _shown(at.error))
    store = open_cohort_store(load_cohort(toml))
    assert [r for r in store.history() if r.reason != "import"] == []
    assert store.state("s01").outlier is False


def test_relabel_with_name_writes_one_audit_row_and_moves_on(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _run(monkeypatch, toml)
    at.text_input(key="reviewer").set_value("ann").run()
    at.selectbox(key="rv_s01_1_new_label").set_value("tumor")
    at.text_input(key="rv_s01_reason").set_value("clearly tumour")
    _button(at, "Save label").click().run()
    assert not at.exception
    store = open_cohort_store(load_cohort(toml))
    edits = [r for r in store.history() if r.reason != "import"]
    assert [(r.image_id, r.field, r.old_value, r.new_value, r.reviewer, r.reason, r.model_version)
            for r in edits] == [("s01", "label", "normal", "tumor", "ann", "clearly tumour", "v001-abmil")]
    assert any("s01: saved label = 'tumor'" in s for s in _shown(at.success))
    assert at.selectbox(key="rv_slide").value == "s02"  # next in the queue
    # the reviewer name survives and the history of s01 shows the change when going back
    at.selectbox(key="rv_slide").set_value("s01").run()
    hist = at.table[0].value
    assert hist.iloc[0]["new"] == "tumor" and hist.iloc[0]["reviewer"] == "ann"
    assert hist.iloc[1]["reason"] == "import"
    assert at.text_input(key="reviewer").value == "ann"


def test_note_is_plain_text_and_stale_edit_shows_conflict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _run(monkeypatch, toml)
    at.text_input(key="reviewer").set_value("ann").run()
    note = "<script>window.x=1</script> **not bold**"
    at.text_area(key="rv_s01_note").set_value(note)
    _button(at, "Save note").click().run()
    assert any(t.value == "Note: " + note for t in at.text)
    assert not any("<script>" in m.value for m in at.markdown)
    # someone else edits s01 while this page still shows version 2
    store = open_cohort_store(load_cohort(toml))
    store.set_label("s01", "tumor", "bob", "seen at the microscope", 2)
    _button(at, "Flag outlier").click().run()
    errors = _shown(at.error)
    assert any("bob changed label 'normal' -> 'tumor'" in e for e in errors), errors
    assert store.state("s01").outlier is False and store.state("s01").version == 3


def test_export_button_writes_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _run(monkeypatch, toml)
    _button(at, "Export labels").click().run()
    assert not at.exception
    out = toml.parent / "labels_reviewed.csv"
    assert out.is_file() and (toml.parent / "labels_reviewed.manifest.json").is_file()
    assert len(out.read_text().splitlines()) == 9
    assert any("wrote 8 labels" in s.value for s in at.success)


def test_bad_labels_file_shows_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    (toml.parent / "labels.csv").write_text("image_id,label\ns00,normal\nnope,tumor\n")
    at = _run(monkeypatch, toml)
    assert len(at.error) == 1 and "id(s) with no slide: nope" in _plain(at.error[0].value)


def test_slide_query_parameter_opens_that_slide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLIDELENS_COHORT", str(make_review_cohort(tmp_path / "c")))
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["slide"] = "s07"
    at.run()
    assert at.selectbox(key="rv_slide").value == "s07"
    assert at.metric[0].value == "normal"


def test_panel_as_the_viewer_calls_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """relabel_panel(cohort, image_id) alone (as beside the viewer) asks for the name and saves audited edits."""
    toml = make_review_cohort(tmp_path / "c")
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_string("from ui.context import current_cohort\nfrom ui.review_panel import relabel_panel\n"
                             "relabel_panel(current_cohort(), 's03')\n", default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    at.text_input(key="reviewer").set_value("vera").run()
    _button(at, "Second opinion").click().run()
    assert not at.exception
    state = open_cohort_store(load_cohort(toml)).state("s03")
    assert state.second_opinion and state.updated_by == "vera"
    assert _button(at, "Clear 2nd opinion") is not None


def test_retrain_button_trains_a_new_version_in_the_background(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """The button exports the reviewed labels, trains in a background thread with progress shown, then reports and
    registers the new version (features are stand-ins of the right shape: the training itself is tested elsewhere)."""
    import time

    import numpy as np
    from _review_data import SLIDES

    from core.model.feature_files import FeatureBag, write_features

    toml = make_review_cohort(tmp_path / "c")
    rng = np.random.default_rng(0)
    for image_id, (label, *_rest) in SLIDES.items():
        x = rng.normal(0, 1, (10, 8)).astype(np.float32)
        x[:3, 0 if label == "normal" else 1] += 3.0
        coords = np.stack([np.arange(10) * 64, np.zeros(10)], axis=1).astype(np.int64)
        write_features(toml.parent / "features" / f"{image_id}.h5",
                       FeatureBag(x, coords, patch_size_level0=64, mpp=0.5, backbone="test"))
    at = _run(monkeypatch, toml)
    _button(at, "Retrain on the reviewed labels").click().run()
    assert not at.exception
    deadline = time.time() + 120
    while not any("New model version" in s.value for s in at.success) and time.time() < deadline:
        assert not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.run()
    message = next(s.value for s in at.success if "New model version" in s.value)
    version = message.split("New model version ")[1].split()[0]
    assert version == "v002-abmil" and (toml.parent / "models" / version / "model.json").is_file()
    assert (toml.parent / "labels_reviewed.csv").is_file()  # what it trained on, exported first
    store = open_cohort_store(load_cohort(toml))
    assert version in [v["version"] for v in store.model_versions()]
    assert not store.predictions(version).empty  # its out-of-fold predictions, recorded for the comparison


def _named(monkeypatch: pytest.MonkeyPatch, toml: Path, name: str = "ann") -> AppTest:
    at = _run(monkeypatch, toml)
    at.text_input(key="reviewer").set_value(name).run()
    return at


def _edits(toml: Path, image_id: str | None = None) -> list:
    store = open_cohort_store(load_cohort(toml), sync=False)
    return [r for r in store.history(image_id) if r.reason != "import"]


def test_unchanged_label_is_not_saved_nor_counted_as_reviewed(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """Save label (what Enter in the reason does) with the label as it is: nothing saved, the slide stays put."""
    toml = make_review_cohort(tmp_path / "c")
    at = _named(monkeypatch, toml)
    _button(at, "Save label").click().run()
    assert not at.exception
    assert any("s01: nothing changed (label is already 'normal')" in m for m in _shown(at.info))
    assert _edits(toml) == [] and at.selectbox(key="rv_slide").value == "s01"
    assert "(0 reviewed so far)" in _plain(at.caption[0].value)
    assert not any(b.label == "Undo" for b in at.button)


def test_relabel_then_undo_restores_the_label_with_both_rows_in_the_audit(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _named(monkeypatch, toml)
    at.selectbox(key="rv_s01_1_new_label").set_value("tumor")
    _button(at, "Save label").click().run()
    assert at.selectbox(key="rv_slide").value == "s02"  # moved on; the undo stays at hand
    assert any("Last change: s01: label = 'tumor'" in c for c in _shown(at.caption))
    _button(at, "Undo").click().run()
    assert not at.exception
    assert at.selectbox(key="rv_slide").value == "s01"  # back to the slide that was undone
    assert any("s01: undone (label back to 'normal'" in m for m in _shown(at.success))
    state = open_cohort_store(load_cohort(toml), sync=False).state("s01")
    assert (state.label, state.version, state.updated_by) == ("normal", 3, "import")  # not reviewed any more
    edits = _edits(toml)
    assert [(r.old_value, r.new_value, r.undoes) for r in edits] == [("normal", "tumor", None),
                                                                   ("tumor", "normal", edits[0].id)]
    hist = at.table[0].value
    assert _plain(hist.iloc[0]["reason"]) == f"undo of #{edits[0].id}" and len(hist) == 3
    assert not any(b.label == "Undo" for b in at.button)  # one step: the undo itself is not offered again


def test_flag_and_exclude_record_the_reviewers_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _named(monkeypatch, toml)
    at.text_input(key="rv_s01_reason").set_value("pen marks over the tissue")
    _button(at, "Flag outlier").click().run()
    at.selectbox(key="rv_slide").set_value("s03").run()
    _button(at, "Exclude").click().run()  # no reason typed: said so in the audit
    assert [(r.image_id, r.field, r.reason) for r in _edits(toml)] == [
        ("s01", "outlier", "pen marks over the tissue"), ("s03", "exclude", "exclude (no reason given)")]


def test_skip_keeps_the_typed_reason_and_note_for_the_slide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _named(monkeypatch, toml)
    at.text_input(key="rv_s01_reason").set_value("half typed")
    at.text_area(key="rv_s01_note").set_value("draft note")
    _button(at, "Skip").click().run()
    assert at.selectbox(key="rv_slide").value == "s02" and _edits(toml) == []
    at.selectbox(key="rv_slide").set_value("s01").run()
    assert at.text_input(key="rv_s01_reason").value == "half typed"
    assert at.text_area(key="rv_s01_note").value == "draft note"


def test_user_text_in_messages_is_escaped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c")
    at = _named(monkeypatch, toml, name="**eve** [x](http://example.com)")
    note = "**bold** [x](http://example.com) ![i](http://example.com/i.png)"
    at.text_area(key="rv_s01_note").set_value(note)
    _button(at, "Save note").click().run()
    msg = next(s.value for s in at.success if "saved note" in _plain(s.value))
    assert f"saved note = {note!r}" in _plain(msg)
    assert "**" not in msg and "](http" not in msg  # every Markdown character escaped
    store = open_cohort_store(load_cohort(toml), sync=False)
    store.set_label("s01", "tumor", "**mallory** ![i](http://example.com/m.png)", "_why_", 2)
    _button(at, "Flag outlier").click().run()
    err = at.error[0].value
    assert "**mallory** ![i](http://example.com/m.png) changed label" in _plain(err) and "](http" not in err
    hist = at.table[0].value
    assert "](http" not in "".join(hist["reviewer"]) + "".join(hist["new"])


def test_prediction_says_which_model_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Out-of-fold (what the queue judges) and the final model, each named, even when they disagree."""
    from _review_data import set_final_predictions

    toml = make_review_cohort(tmp_path / "c")
    set_final_predictions(toml.parent, {"s01": 0.2})
    at = _run(monkeypatch, toml)
    texts = [t.value for t in at.text]
    assert "Prediction (out-of-fold, judges errors): tumor" in texts
    assert "Final model v001-abmil (the viewer's overlay): normal" in texts
    assert not any("predicts" in t for t in texts)
    row = at.dataframe[0].value.iloc[0]
    assert (row["image_id"], row["pred"], row["pred_source"]) == ("s01", "tumor", "out-of-fold")
