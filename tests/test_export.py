"""Review queue, labels export (checked row by row), its manifest, and the export / db commands."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from _review_data import OOD_THRESHOLD, SLIDES, make_review_cohort, set_final_predictions

from core.cli import main
from core.cohort.cohort_file import Cohort, load_cohort
from core.cohort.labels import read_labels
from core.errors import InputError
from core.review.export import export_labels, manifest_path_for
from core.review.queue import build_queue, filter_queue, open_cohort_store
from core.review.store import Store


@pytest.fixture
def cohort(tmp_path: Path) -> Cohort:
    return load_cohort(make_review_cohort(tmp_path / "c"))


@pytest.fixture
def store(cohort: Cohort) -> Store:
    return open_cohort_store(cohort)


def _edit(store: Store, image_id: str, who: str, **changes: object) -> None:
    store.edit(image_id, changes, who, "test", store.state(image_id).version)


def test_queue_mixes_sources_with_reasons(cohort: Cohort, store: Store) -> None:
    _edit(store, "s06", "ann", second_opinion=True)
    q = build_queue(cohort, store)
    assert len(q) == len(SLIDES)
    queue = filter_queue(q)
    by_id = queue.set_index("image_id")
    assert set(by_id.index) == {"s01", "s02", "s03", "s06"}
    assert "label issue #1: out-of-fold prediction suggests 'tumor'" in by_id.loc["s01", "reasons"]
    assert f"OOD score 9 > threshold {OOD_THRESHOLD:g}" in by_id.loc["s02", "reasons"]
    # the rule of core.review.slide_table: judged on the out-of-fold prediction (0.55), not the final model's (0.54)
    assert "low confidence (out-of-fold): 0.55" in by_id.loc["s03", "reasons"]
    assert (by_id.loc["s03", "pred_source"], by_id.loc["s03", "final_pred"]) == ("out-of-fold", "tumor")
    assert by_id.loc["s06", "reasons"] == "second opinion requested by ann"
    assert queue["priority"].is_monotonic_decreasing
    assert list(filter_queue(q, ["outlier"])["image_id"]) == ["s02"]
    assert list(filter_queue(q, None, text="S0")["image_id"]) == list(queue["image_id"])
    _edit(store, "s01", "ann", label="tumor")
    q2 = build_queue(cohort, store)
    # the relabelled slide is no longer a label issue, and 'hide reviewed' drops the reviewed ones
    assert not q2.set_index("image_id").loc["s01", "label_issue"]
    assert set(filter_queue(q2, hide_reviewed=True)["image_id"]) == {"s02", "s03"}


def test_queue_judges_out_of_fold_and_keeps_the_final_model_apart(cohort: Cohort, store: Store) -> None:
    """The queue's prediction is the out-of-fold one (what errors are judged on), the final model's is final_pred;
    the label is the reviewed label."""
    set_final_predictions(cohort.root, {"s01": 0.2, "s04": 0.3})  # the final model now disagrees on two slides
    _edit(store, "s04", "ann", label="normal")
    q = build_queue(cohort, store).set_index("image_id")
    assert (q.loc["s01", "pred"], q.loc["s01", "pred_source"], q.loc["s01", "final_pred"]) == \
        ("tumor", "out-of-fold", "normal")
    assert q.loc["s01", "confidence"] == pytest.approx(0.96)
    assert "out-of-fold prediction suggests 'tumor'" in q.loc["s01", "reasons"]
    assert (q.loc["s04", "label"], q.loc["s04", "pred"], q.loc["s04", "final_pred"]) == ("normal", "tumor", "normal")


def test_queue_without_a_model_lists_flags_only(tmp_path: Path) -> None:
    cohort = load_cohort(make_review_cohort(tmp_path / "nomodel", with_model=False))
    store = open_cohort_store(cohort)
    _edit(store, "s04", "bob", second_opinion=True)
    queue = filter_queue(build_queue(cohort, store))
    assert list(queue["image_id"]) == ["s04"] and queue["pred"].isna().all()


def test_export_row_by_row_and_manifest(cohort: Cohort, store: Store, tmp_path: Path) -> None:
    _edit(store, "s01", "ann", label="tumor", note='has "quotes", commas\nand a newline')
    _edit(store, "s02", "ann", outlier=True)
    _edit(store, "s05", "bob", exclude=True)
    _edit(store, "s03", "bob", label="Other", outlier=True)
    _edit(store, "s06", "bob", second_opinion=True)
    out = tmp_path / "out" / "labels_v2.csv"
    res = export_labels(cohort, store, out)
    with open(out, newline="") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    expected_ids = sorted(set(SLIDES) - {"s05"})
    assert list(rows) == expected_ids
    for image_id in expected_ids:
        r, (given, *_rest) = rows[image_id], SLIDES[image_id]
        want_label = {"s01": "tumor", "s03": "Other"}.get(image_id, given)
        assert r["label"] == want_label, image_id
        assert r["original_label"] == given
        assert r["is_outlier"] == ("1" if image_id in ("s02", "s03") else "0"), image_id
        assert r["second_opinion"] == ("1" if image_id == "s06" else "0")
        assert r["reviewed_by"] == {"s01": "ann", "s02": "ann", "s03": "bob", "s06": "bob"}.get(image_id, "")
        assert r["site"] in ("site0", "site1")  # extra columns of the source labels are kept
    assert rows["s01"]["note"] == 'has "quotes", commas\nand a newline'
    assert (res.rows, res.excluded, res.outliers, res.changed) == (7, 1, 2, 2)
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest_path_for(out).name == "labels_v2.manifest.json"
    assert manifest["audit_max_id"] == store.history()[-1].id == res.audit_max_id
    assert manifest["reviewer_edits"] == {"ann": 3, "bob": 4}
    assert manifest["source_labels_sha256"] == hashlib.sha256(Path(cohort.labels).read_bytes()).hexdigest()
    assert manifest["labels_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["cohort"] == "review-test"
    # the exported file is a valid training labels file: outliers and 'Other' are not trained on
    table = read_labels(out)
    assert table.classes == ("normal", "tumor")
    assert sorted(table.training_rows()["image_id"]) == ["s00", "s01", "s04", "s06", "s07"]
    assert not list(out.parent.glob(".*.tmp"))  # no temp files left behind
    # later edits do not change what the manifest position replays to
    _edit(store, "s00", "carol", label="tumor")
    replay = store.derive_state_from_audit(up_to_id=manifest["audit_max_id"])
    assert replay["s00"].label == "normal" and store.state("s00").label == "tumor"


def test_bad_labels_file_imports_nothing(tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "bad")
    labels = toml.parent / "labels.csv"
    labels.write_text("image_id,label\ns00,normal\ns01,tumor\ns01,normal\nghost,tumor\n")
    cohort = load_cohort(toml)
    with pytest.raises(InputError) as info:
        open_cohort_store(cohort)
    msg = str(info.value)
    assert "labels.csv" in msg and "duplicate id 's01' on lines 3, 4" in msg and "ghost" in msg
    store = open_cohort_store(cohort, sync=False)
    assert store.states() == {} and store.history() == []


def test_export_command_and_db_apply(cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("image_id,label,is_outlier\ns01,tumor,0\ns02,tumor,1\ns04,tumor,0\n")
    toml = str(cohort.source)
    assert main(["db", "apply", str(fixes), "--cohort", toml, "--reviewer", "curator", "--reason", "truth"]) == 0
    assert "2 slide(s) changed, 1 already" in capsys.readouterr().out
    assert main(["db", "history", "s01", "--cohort", toml]) == 0
    assert "curator changed label 'normal' -> 'tumor'" in capsys.readouterr().out
    out = tmp_path / "labels_v2.csv"
    assert main(["export", "--cohort", toml, "--out", str(out)]) == 0
    assert "wrote 8 labels" in capsys.readouterr().out
    rows = {r["image_id"]: r for r in csv.DictReader(out.open())}
    assert rows["s01"]["label"] == "tumor" and rows["s02"]["is_outlier"] == "1"
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,label\ns01,banana\n")
    assert main(["db", "apply", str(bad), "--cohort", toml, "--reviewer", "x", "--reason", "y"]) == 2
    assert "unknown class 'banana' on line(s) 2" in capsys.readouterr().err
    assert main(["db", "apply", str(fixes), "--cohort", toml, "--reviewer", " ", "--reason", "y"]) == 2
