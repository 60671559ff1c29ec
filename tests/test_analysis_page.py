"""The error-analysis page with streamlit's AppTest, on a tiny cohort written by the test (real slides, real CSVs,
real review database): reviewed labels as the truth, the view in the URL, bad URLs said in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import synthetic_tissue, write_pyramid_tiff
from core.cohort.cohort_file import load_cohort
from core.review.queue import open_cohort_store
from ui.safe import md

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "analysis.py")
CLASSES = ["CC", "EC", "HGSC"]
# image_id, label, v001 pred, v002 pred, is_tma, site
ROWS = [
    ("s00", "CC", "CC", "CC", 0, "A"), ("s01", "CC", "CC", "CC", 0, "B"), ("s02", "CC", "HGSC", "CC", 1, "A"),
    ("s03", "EC", "EC", "EC", 0, "B"), ("s04", "EC", "HGSC", "HGSC", 1, "A"), ("s05", "EC", "HGSC", "EC", 0, "B"),
    ("s06", "HGSC", "HGSC", "HGSC", 0, "A"), ("s07", "HGSC", "HGSC", "EC", 0, "B"), ("s08", "HGSC", "CC", "CC", 1, "A"),
    ("s09", "HGSC", "HGSC", "HGSC", 0, "B"), ("s10", "Other", "CC", "CC", 0, "A"),
]


def _preds(col: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r in ROWS:
        p = rng.uniform(0.05, 0.2, 3)
        p[CLASSES.index(r[col])] = rng.uniform(0.5, 0.9)
        p = p / p.sum()
        rows.append({"image_id": r[0], "pred": r[col], **{f"prob_{c}": p[i] for i, c in enumerate(CLASSES)},
                     "ood_score": 0.1})
    return pd.DataFrame(rows)


def build_cohort(root: Path, versions: int = 2, slides: bool = True) -> Path:
    """cohort.toml + labels.csv + slides + models/v00N-abmil/{model.json,oof_predictions.csv}; returns the TOML."""
    (root / "slides").mkdir(parents=True, exist_ok=True)
    if slides:
        for i, r in enumerate(ROWS):
            write_pyramid_tiff(root / "slides" / f"{r[0]}.tiff", synthetic_tissue(384, 256, seed=i), levels=1)
    pd.DataFrame([{"image_id": r[0], "label": r[1], "is_tma": bool(r[4]), "site": r[5]} for r in ROWS]).to_csv(
        root / "labels.csv", index=False)
    for v in range(1, versions + 1):
        mdir = root / "models" / f"v00{v}-abmil"
        mdir.mkdir(parents=True, exist_ok=True)
        (mdir / "model.json").write_text(json.dumps({"version": mdir.name, "model": "abmil", "classes": CLASSES}))
        _preds(1 + v, seed=v).to_csv(mdir / "oof_predictions.csv", index=False)
    toml = root / "cohort.toml"
    toml.write_text('name = "t"\nslides = "slides"\nlabels = "labels.csv"\n')
    return toml


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("an_cohort"))


def run_page(monkeypatch: pytest.MonkeyPatch, toml: Path, **params: str) -> AppTest:
    """The page as opened from a URL with ``params`` (e.g. model=..., tab=..., cell=...)."""
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    at = AppTest.from_file(PAGE, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def open_tab(at: AppTest, name: str) -> AppTest:
    """Switch tabs the way the browser does: the tab bar is bound to ?tab=."""
    at.query_params["tab"] = name
    at.run()
    assert not at.exception, at.exception
    return at


def _blocks(node: object):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _blocks(child)


def _table(at: AppTest, key: str) -> pd.DataFrame:
    """The table shown in the container keyed ``<key>_box`` (ui.analysis_views.table_with_download)."""
    box = next(b for b in _blocks(at._tree) if getattr(b, "key", None) == key.removesuffix("_table") + "_box")
    return box.dataframe[0].value


def _param(at: AppTest, name: str) -> str | None:
    v = at.query_params.get(name)
    return v[0] if isinstance(v, list) else v


def test_page_metrics_and_default_cell(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort)
    assert at.selectbox(key="an_version").value == "v002-abmil"
    assert _param(at, "model") == "v002-abmil"  # the URL names the version shown
    cards = {m.label: m.value for m in at.metric}
    # v002 on the 10 scored slides: CC 3/3, EC 2/3, HGSC 2/4
    assert cards["Balanced accuracy"] == f"{(1 + 2 / 3 + 2 / 4) / 3:.3f}"
    assert cards["Slides scored"] == "10" and cards["Errors"] == "3"
    assert any(c.value == md("out-of-fold, against reviewed labels (10 slides)") for c in at.caption)
    kinds = _table(at, "an_by_kind_table").set_index("slide_kind")
    assert kinds.loc["TMA", "n"] == 3 and kinds.loc["WSI", "n"] == 7
    at.selectbox(key="an_by").set_value("site").run()
    site = _table(at, "an_by_col_table").set_index("site")
    assert site.loc["A", "n"] == 5 and site.loc["B", "n"] == 5  # s10 ('Other', site A) is not scored
    open_tab(at, "Confusion")
    # the default cell is the costliest error of v002: EC -> HGSC (1 of 3) beats HGSC -> CC/EC (1 of 4 each)
    assert (at.selectbox(key="an_true").value, at.selectbox(key="an_pred").value) == ("EC", "HGSC")
    assert _table(at, "an_cell_table")["image_id"].tolist() == ["s04"]
    assert _param(at, "cell") == "EC,HGSC"


def test_selecting_a_cell_lists_exactly_those_slides(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, tab="Confusion")
    at.selectbox(key="an_version").set_value("v001-abmil").run()
    assert _param(at, "model") == "v001-abmil"
    at.selectbox(key="an_true").set_value("EC").run()
    at.selectbox(key="an_pred").set_value("HGSC").run()
    assert not at.exception
    assert _param(at, "cell") == "EC,HGSC"  # Back from the viewer and shared links come back to this cell
    cell = _table(at, "an_cell_table")
    assert sorted(cell["image_id"]) == ["s04", "s05"]
    assert list(cell.columns[:2]) == ["image_id", "viewer"]  # the link is never the column a narrow table cuts
    assert cell["viewer"].tolist()[0].startswith("/viewer?slide=s0") and "model=v001-abmil" in cell["viewer"][0]
    links = [m.value for m in at.markdown if "an-viewer-link" in m.value]
    assert len(links) == 2 and all("target=\"_self\"" in v for v in links)
    assert len(at.get("image")) == 2  # one thumbnail per slide, read from the real TIFFs
    at.selectbox(key="an_true").set_value("HGSC").run()
    at.selectbox(key="an_pred").set_value("HGSC").run()
    assert sorted(_table(at, "an_cell_table")["image_id"]) == ["s06", "s07", "s09"]  # 'Other' s10 never listed


def test_url_restores_version_tab_and_cell(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    # what Back from the viewer (or a shared link) opens: the old page ignored ?model= and always showed Metrics
    at = run_page(monkeypatch, cohort, model="v001-abmil", tab="Confusion", cell="HGSC,CC")
    assert at.selectbox(key="an_version").value == "v001-abmil"
    assert (at.selectbox(key="an_true").value, at.selectbox(key="an_pred").value) == ("HGSC", "CC")
    assert _table(at, "an_cell_table")["image_id"].tolist() == ["s08"]
    assert "model=v001-abmil" in _table(at, "an_cell_table")["viewer"][0]
    # a cell that names no class pair is said, as text, and the costliest error is shown instead
    at = run_page(monkeypatch, cohort, tab="Confusion", cell="EC,*nope*")
    assert any(w.value == md("no confusion cell 'EC,*nope*' for the classes CC, EC, HGSC: showing the costliest "
                             "error") for w in at.warning)
    assert (at.selectbox(key="an_true").value, at.selectbox(key="an_pred").value) == ("EC", "HGSC")
    at = run_page(monkeypatch, cohort, tab="Confusions")
    assert [w.value for w in at.warning] == [md("no tab 'Confusions' (tabs: Metrics, Confusion, Impact, Calibration, "
                                                "Label issues, Compare, Annotations): showing Metrics")]


def test_unknown_model_in_the_url_is_said_never_replaced(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, model="v999-*bogus*")
    assert [e.value for e in at.error] == [md("no model version 'v999-*bogus*' in this cohort; its versions: "
                                              "v001-abmil, v002-abmil")]
    assert not at.metric  # nothing of another version is shown as if it were the one asked for
    at.selectbox(key="an_pick").set_value("v001-abmil").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="an_version").value == "v001-abmil" and _param(at, "model") == "v001-abmil"
    assert {m.label: m.value for m in at.metric}["Balanced accuracy"] == f"{(2 / 3 + 1 / 3 + 3 / 4) / 3:.3f}"


def test_counts_toggle_impact_calibration_issues(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, tab="Confusion")
    cm = _table(at, "an_cm_table").set_index("true")
    assert cm.to_numpy().sum() == 10
    at.radio(key="an_cm_mode").set_value("row-normalised").run()
    norm = _table(at, "an_cm_table").set_index("true")
    assert norm.sum(axis=1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    open_tab(at, "Impact")
    impact = _table(at, "an_impact_table")
    # v002 errs on s04 (EC of 3), s07 and s08 (HGSC of 4): gains 1/3/3, 1/4/3, 1/4/3
    assert impact["ba_gain"].tolist() == pytest.approx([1 / 9, 1 / 12, 1 / 12]) and impact["count"].sum() == 3
    open_tab(at, "Calibration")
    at.slider(key="an_threshold").set_value(0.99).run()
    cov = {m.label: m.value for m in at.metric}
    assert cov["Coverage"] == "0.0%" and cov["Balanced accuracy (kept)"] == "n/a"
    open_tab(at, "Label issues")
    issues = _table(at, "an_issues_table")
    assert list(issues.columns[:6]) == ["image_id", "viewer", "label", "suggested_label", "score", "rank"]
    assert "s10" not in set(issues["image_id"])
    open_tab(at, "Confusion")
    assert at.radio(key="an_cm_mode").value == "row-normalised"  # kept while another tab was open


def test_compare_versions_lists_changed_slides(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, tab="Compare")
    assert at.selectbox(key="an_compare").value == "v001-abmil"
    changed = _table(at, "an_cmp_changed_table").set_index("image_id")
    assert changed["status"].to_dict() == {"s02": "fixed", "s05": "fixed", "s07": "broken"}


def test_scores_follow_the_reviewed_labels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The old page scored against labels.csv: a relabel or an outlier flag changed nothing here (issue 12)."""
    toml = build_cohort(tmp_path / "c")
    (tmp_path / "c" / "results" / "v002-abmil").mkdir(parents=True)
    _preds(3, seed=2).to_csv(tmp_path / "c" / "results" / "v002-abmil" / "predictions.csv", index=False)
    store = open_cohort_store(load_cohort(toml))
    store.set_label("s07", "EC", "ann", "second look: endometrioid", store.state("s07").version)
    store.set_flag("s00", "outlier", True, "ann", "not ovarian", store.state("s00").version)
    at = run_page(monkeypatch, toml)
    cards = {m.label: m.value for m in at.metric}
    # v002 against the reviewed labels, s00 not scored: CC 2/2, EC 3/4 (s04 called HGSC), HGSC 2/3 (s08 called CC)
    assert cards["Balanced accuracy"] == f"{(1 + 3 / 4 + 2 / 3) / 3:.3f}"
    assert cards["Slides scored"] == "9" and cards["Errors"] == "2"
    assert any(c.value == md("out-of-fold, against reviewed labels (9 slides)") for c in at.caption)
    open_tab(at, "Compare")
    changed = _table(at, "an_cmp_changed_table").set_index("image_id")
    assert changed["status"].to_dict() == {"s02": "fixed", "s05": "fixed", "s07": "fixed"}  # s07 was 'broken'
    at.query_params["cell"] = "EC,EC"
    open_tab(at, "Confusion")
    cell = _table(at, "an_cell_table").set_index("image_id")
    assert cell.loc["s07", "label"] == "EC" and cell.loc["s07", "given_label"] == "HGSC"
    # the final model's view is there, and says what it is
    at.radio(key="an_source").set_value("final").run()
    assert _param(at, "preds") == "final"
    assert any("optimistic" in w.value for w in at.warning)
    assert any(c.value == md("final model, trained on these slides - optimistic, against reviewed labels (9 slides)")
               for c in at.caption)


def test_page_without_models_or_with_bad_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = build_cohort(tmp_path / "empty", versions=0, slides=False)
    at = run_page(monkeypatch, toml)
    assert any("No model yet" in i.value for i in at.info)
    toml = build_cohort(tmp_path / "bad", versions=1, slides=False)
    (tmp_path / "bad" / "models" / "v001-abmil" / "oof_predictions.csv").write_text("image_id,pred\ns00,CC\n")
    at = run_page(monkeypatch, toml)
    assert len(at.error) == 1
    text = at.error[0].value.replace("\\", "")  # shown as text: Markdown characters come escaped
    assert "oof_predictions.csv" in text and "prob_" in text


def test_labels_file_columns_are_shown_as_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = build_cohort(tmp_path / "c", versions=1, slides=False)
    labels = pd.read_csv(tmp_path / "c" / "labels.csv").rename(columns={"site": "**site** [x](http://e)"})
    labels.to_csv(tmp_path / "c" / "labels.csv", index=False)
    for r in ROWS:  # the review database needs the slides the labels name
        (tmp_path / "c" / "slides" / f"{r[0]}.png").write_bytes((ROOT / "docs" / "demo_thumbnails.png").read_bytes())
    at = run_page(monkeypatch, toml)
    assert at.selectbox(key="an_by").options == ["**site** [x](http://e)"]
    labels_shown = [b.label for b in at.get("download_button")]
    assert "Download by__site_x_http_e.csv" in [lab.replace("\\", "") for lab in labels_shown]
    assert not any("](" in lab for lab in labels_shown)


def test_confusion_export_renders_svg_and_png() -> None:
    from ui.analysis_views import confusion_figure, render_figure

    cm = pd.DataFrame([[3, 0], [1, 2]], index=pd.Index(["CC", "EC"], name="true"),
                      columns=pd.Index(["CC", "EC"], name="pred"))
    fig = confusion_figure(cm, normalized=False, interactive=False)
    assert len(fig.data) == 1  # the export has no selection markers
    svg = render_figure(fig, "svg")
    assert svg.startswith(b"<svg") and b"EC" in svg and b"Confusion matrix" in svg
    assert render_figure(fig, "png")[:8] == b"\x89PNG\r\n\x1a\n"
