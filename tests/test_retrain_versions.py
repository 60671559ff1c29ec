"""A model version without predictions (a retrain in progress, failed or killed) never takes the app down: the
demo stays complete, pages default to the newest version with predictions, retrain computes the new version's
predictions itself, the first run resumes what is missing, and the first-run screen never reruns in a loop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _retrain_data import make_demo_like
from _review_data import SLIDES, VERSION
from streamlit.testing.v1 import AppTest

from core.cohort.cohort_file import load_cohort
from core.demo.firstrun import (
    ESTIMATE_S,
    STAGES,
    FirstRunStatus,
    StageStatus,
    demo_is_complete,
    demo_missing,
    read_status,
    run_first_run,
)
from core.errors import InputError
from core.model.versions import default_index, default_version
from core.review.queue import load_model_view, open_cohort_store, retrain

ROOT = Path(__file__).resolve().parents[1]


def test_newer_version_without_predictions_keeps_the_demo_complete(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    make_demo_like(root, killed_retrain=True)
    assert (root / "models" / "v002-abmil" / "model.json").is_file()
    assert not (root / "results" / "v002-abmil").exists()
    assert demo_missing(root) == [] and demo_is_complete(root)
    # what the gate does ask for: predictions of some version, and features of every slide
    (root / "results" / VERSION / "predictions.csv").unlink()
    assert demo_missing(root) == ["predictions of v002-abmil"]
    (root / "features" / "s03.h5").unlink()
    assert any("patch features of 1 of 8 slides" in m for m in demo_missing(root))
    assert not demo_is_complete(root)


def test_pages_default_to_the_newest_version_with_predictions(tmp_path: Path) -> None:
    from core.review.summary import cohort_summary

    root = tmp_path / "demo"
    cohort = load_cohort(make_demo_like(root, killed_retrain=True))
    both = [VERSION, "v002-abmil"]
    assert default_version(cohort.models, cohort.results) == VERSION
    assert default_index(both, cohort.models, cohort.results) == 0
    assert load_model_view(cohort).version == VERSION
    summary = cohort_summary(cohort)
    assert summary.version == VERSION and summary.versions == both and summary.disagreements is not None
    # once the new version has its predictions it becomes the default
    (root / "results" / "v002-abmil").mkdir(parents=True)
    (root / "results" / "v002-abmil" / "predictions.csv").write_text(
        (root / "results" / VERSION / "predictions.csv").read_text())
    assert default_version(cohort.models, cohort.results) == "v002-abmil"
    assert default_index(both, cohort.models, cohort.results) == 1
    assert default_version(tmp_path / "none", tmp_path / "none") is None


@pytest.mark.slow
def test_retrain_leaves_predictions_and_attention_of_the_new_version(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    cohort = load_cohort(make_demo_like(root))
    store = open_cohort_store(cohort)
    seen: list[tuple[float, str]] = []
    # 30 epochs: a model that learned its labels (3 epochs learn nothing here, and core/model/health.py then keeps
    # the new version from being the default, which the last line checks)
    version = retrain(cohort, store, cohort.labels, progress=lambda f, m: seen.append((f, m)), folds=2, epochs=30,
                      device="cpu")
    assert version == "v002-abmil"
    preds = pd.read_csv(root / "results" / version / "predictions.csv", dtype={"image_id": str})
    assert sorted(preds["image_id"]) == sorted(SLIDES)
    assert all((root / "results" / version / "attention" / f"{i}.h5").is_file() for i in SLIDES)
    assert version in [v["version"] for v in store.model_versions()]
    assert not store.predictions(version).empty
    # one progress bar over both parts: training up to 0.8, then the predictions, ending at 1
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0)
    assert any(m.startswith("training") for _, m in seen)
    assert any(m.startswith("predictions and attention") and f > 0.8 for f, m in seen)
    assert default_version(cohort.models, cohort.results) == version and demo_is_complete(root)


@pytest.mark.slow
def test_retrain_whose_predictions_fail_registers_the_version_and_says_how_to_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.model.infer

    root = tmp_path / "demo"
    cohort = load_cohort(make_demo_like(root))
    store = open_cohort_store(cohort)

    def broken(*_a, **_k) -> None:
        raise InputError("features/s03.h5: not a readable HDF5 features file")

    monkeypatch.setattr(core.model.infer, "ensure_results", broken)
    with pytest.raises(InputError, match=r"v002-abmil was trained but its predictions failed .*"
                                         r"python -m core infer --cohort .*cohort.toml --version v002-abmil"):
        retrain(cohort, store, cohort.labels, folds=2, epochs=2, device="cpu")
    assert "v002-abmil" in [v["version"] for v in store.model_versions()]
    assert demo_is_complete(root) and default_version(cohort.models, cohort.results) == VERSION


@pytest.mark.slow
def test_first_run_resumes_missing_predictions_of_a_newer_version_without_training(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    cohort = load_cohort(make_demo_like(root))
    store = open_cohort_store(cohort)
    version = retrain(cohort, store, cohort.labels, predict=False, folds=2, epochs=2, device="cpu")
    out = root / "results" / version
    assert not out.exists()
    # a killed inference: some slides predicted, the rest missing
    out.mkdir(parents=True)
    (out / "predictions.csv").write_text("image_id,pred,prob_normal,prob_tumor,ood_score\ns00,normal,0.9,0.1,1.0\n")
    run_first_run(root, tiny=True)
    # a cohort built in one go (no truth/plan.json) has no background stages
    assert [s.status for s in read_status(root).stages] == ["skipped", "skipped", "skipped", "done", "done",
                                                            "skipped", "skipped"]
    assert sorted(pd.read_csv(out / "predictions.csv", dtype={"image_id": str})["image_id"]) == sorted(SLIDES)
    assert sorted(p.name for p in (root / "models").iterdir() if not p.name.startswith(".")) == [VERSION, version]


def test_feature_stage_says_which_slide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import core.model.backbones
    import core.model.features
    from core.demo.firstrun import _extract
    from core.model.features import ExtractReport

    cohort = load_cohort(make_demo_like(tmp_path / "demo"))
    monkeypatch.setattr(core.model.backbones, "create_backbone", lambda name: object())

    def fake(slides, out_dir, backbone, progress=None, **_kw) -> ExtractReport:
        (image_id, path), = slides.items()
        progress(0.5, f"{path.name}: 5/10 patches")
        return ExtractReport(written=[image_id])

    monkeypatch.setattr(core.model.features, "extract_cohort", fake)
    seen: list[tuple[float, str]] = []
    _extract(cohort, ["s00", "s01", "s02"], lambda f, m: seen.append((f, m)))
    assert seen == [(pytest.approx(0.5 / 3), "slide 1 of 3 · s00.png: 5/10 patches"),
                    (pytest.approx(1.5 / 3), "slide 2 of 3 · s01.png: 5/10 patches"),
                    (pytest.approx(2.5 / 3), "slide 3 of 3 · s02.png: 5/10 patches")]


def _status(now: float, slower: float, fraction_of_total: float) -> tuple[FirstRunStatus, float]:
    """A first run where every stage takes ``slower`` times its estimate, seen at a point of the whole run; returns
    the status and the true time left."""
    total = sum(ESTIMATE_S.values()) * slower
    t, at = now - fraction_of_total * total, fraction_of_total * total
    stages = []
    for name in STAGES:
        took = ESTIMATE_S[name] * slower
        if at >= took:
            stages.append(StageStatus(name, "done", 1.0, "", t, t + took))
        elif at > 0:
            stages.append(StageStatus(name, "running", at / took, "", t))
        else:
            stages.append(StageStatus(name))
        t, at = t + took, at - took
    return FirstRunStatus("demo", stages, done=False), total * (1 - fraction_of_total)


@pytest.mark.parametrize("slower", [0.6, 1.5, 2.5])
def test_eta_follows_the_speed_measured_on_this_machine(slower: float) -> None:
    now = 1_000_000.0
    for point in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        status, truth = _status(now, slower, point)
        assert status.eta_seconds(now) == pytest.approx(truth, rel=0.15), (slower, point)


def test_eta_uses_stages_an_earlier_run_finished() -> None:
    now = 1_000_000.0
    status = FirstRunStatus("demo", [StageStatus("demo", "skipped", 1.0)] + [StageStatus(n) for n in STAGES[1:]],
                            measured={"demo": ESTIMATE_S["demo"] * 2})
    assert status.eta_seconds(now) == pytest.approx(2 * sum(ESTIMATE_S[n] for n in STAGES[1:]))


def test_eta_until_the_app_opens_leaves_out_the_background_stages() -> None:
    from core.demo.firstrun import BACKGROUND_STAGES, QUICK_STAGES

    now = 1_000_000.0
    status = FirstRunStatus("demo", [StageStatus(n) for n in STAGES])
    quick = status.eta_seconds(now, only=QUICK_STAGES)
    assert quick == pytest.approx(sum(ESTIMATE_S[n] for n in QUICK_STAGES))
    assert status.eta_seconds(now, only=BACKGROUND_STAGES) == pytest.approx(
        sum(ESTIMATE_S[n] for n in BACKGROUND_STAGES))
    assert status.eta_seconds(now) == pytest.approx(quick + sum(ESTIMATE_S[n] for n in BACKGROUND_STAGES))
    assert not status.ready and FirstRunStatus("demo", ready_at=now).ready


def test_first_run_screen_does_not_rerun_when_the_gate_still_finds_something_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last build is done but the demo lacks predictions: the screen says what and how to fix it, no loop."""
    root = tmp_path / "demo"
    make_demo_like(root)
    (root / "results" / VERSION / "predictions.csv").unlink()
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("SLIDELENS_DEMO_TINY", raising=False)
    at = AppTest.from_string("from pathlib import Path\nfrom ui.firstrun_view import first_run_screen\n"
                             f"first_run_screen(Path({str(root)!r}))\n", default_timeout=20)
    at.run()
    assert not at.exception, at.exception
    text = " ".join(w.value for w in at.warning)
    assert "incomplete" in text and "predictions of v001" in text
    assert [c.value for c in at.code] == [f"python -m core firstrun --out {root}"]
    assert any(b.label == "Resume the build" for b in at.button)
    assert read_status(root).done  # nothing was started behind the user's back


def test_background_banner_says_what_is_left_and_resumes_only_a_killed_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the rest of a progressive demo is built the pages open with one quiet line saying what and how long;
    a running build is never started twice, a failed one is reported (not restarted), a killed one resumes."""
    import json
    import os

    import ui.firstrun_view
    from core.demo.firstrun import QUICK_STAGES, _write_status, demo_pending

    root = tmp_path / "demo"
    make_demo_like(root)
    (root / "truth").mkdir(exist_ok=True)
    (root / "truth" / "plan.json").write_text(json.dumps({"seed": 0, "ids": [*sorted(SLIDES), "s98", "s99"]}))
    n = len(SLIDES) + 2
    assert demo_is_complete(root)  # the app opens ...
    assert demo_pending(root) == ["2 more slides", f"the model trained on all {n} slides"]  # ... with work left
    stages = [StageStatus(s, "done", 1.0) for s in QUICK_STAGES]
    stages += [StageStatus("more", "running", 0.5, "slide 2 of 2 · s99: 10/20 patches", 1.0), StageStatus("final")]
    status = FirstRunStatus(str(root), stages, pid=os.getpid(), ready_at=1.0)
    _write_status(root, status)
    started: list[Path] = []
    monkeypatch.setattr(ui.firstrun_view, "start_first_run", lambda d: started.append(d))
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_string("from pathlib import Path\nfrom ui.firstrun_view import background_banner\n"
                             f"background_banner(Path({str(root)!r}))\n", default_timeout=20)
    at.run()
    assert not at.exception, at.exception
    text = " ".join(c.value for c in at.caption).replace("\\", "")  # the text is escaped for Markdown
    assert "Still building in the background" in text and "slide 2 of 2" in text and "left" in text
    assert started == []  # it is running: not started again
    status.error, status.pid = "features failed for 1 slide(s)", 0
    _write_status(root, status)
    at.run()
    assert "background build stopped: features failed" in " ".join(c.value for c in at.caption).replace("\\", "")
    assert started == []  # a failed build is reported, not restarted in a loop
    status.error = None
    _write_status(root, status)
    at.run()
    assert started == [root]  # killed (no process, no error): resumed
