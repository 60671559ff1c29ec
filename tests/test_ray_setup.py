"""The Ray scale-out without a cluster: the cohort setting, where the app's jobs go, and no Ray unless asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.cohort.cohort_file import cohort_from_dict, load_cohort
from core.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_compute_ray_setting_round_trips_and_is_checked(tmp_path: Path) -> None:
    assert cohort_from_dict({}, tmp_path).ray is None
    cohort = cohort_from_dict({"compute": {"ray": " 10.0.0.5:6379 "}}, tmp_path)
    assert cohort.ray == "10.0.0.5:6379"
    (tmp_path / "cohort.toml").write_text(cohort_from_dict({"compute": {"ray": "auto"}}, tmp_path).to_toml())
    assert load_cohort(tmp_path / "cohort.toml").ray == "auto"
    with pytest.raises(InputError, match=r"\[compute\] ray"):
        cohort_from_dict({"compute": {"ray": 3}}, tmp_path)


@pytest.mark.parametrize("ray_setting", [None, "auto"])
def test_bulk_predictions_go_to_the_cluster_only_with_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  ray_setting: str | None) -> None:
    import core.model.infer as infer
    import core.model.ray_jobs as ray_jobs

    class Loaded:
        path, version = tmp_path / "models" / "v001", "v001"

    calls: list[str] = []
    monkeypatch.setattr(infer.mfolders, "resolve_model_dir", lambda models, version: Loaded.path)
    monkeypatch.setattr(infer, "load_model", lambda model_dir: Loaded())
    monkeypatch.setattr(infer, "infer_features", lambda *a, **k: calls.append("local") or pd.DataFrame())

    def on_ray(loaded, features, out, address=None, progress=None):
        calls.append(f"ray:{address}")
        return ray_jobs.RayInferReport(predictions=pd.DataFrame())

    monkeypatch.setattr(ray_jobs, "infer_on_ray", on_ray)
    cohort = cohort_from_dict({"compute": {"ray": ray_setting}} if ray_setting else {}, tmp_path)
    infer.ensure_results(cohort, "v001")  # every slide: a bulk job
    infer.ensure_results(cohort, "v001", ["one"])  # the viewer's Compute attention: always local
    assert calls == (["ray:auto", "local"] if ray_setting else ["local", "local"])


def test_bulk_predictions_on_the_cluster_name_a_failed_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.model.infer as infer
    import core.model.ray_jobs as ray_jobs

    class Loaded:
        path, version = tmp_path / "models" / "v001", "v001"

    monkeypatch.setattr(infer.mfolders, "resolve_model_dir", lambda models, version: Loaded.path)
    monkeypatch.setattr(infer, "load_model", lambda model_dir: Loaded())
    monkeypatch.setattr(ray_jobs, "infer_on_ray", lambda *a, **k: ray_jobs.RayInferReport(
        failed={"s7": "s7.h5: features have dimension 3"}, predictions=pd.DataFrame()))
    with pytest.raises(InputError, match="failed for 1 slide.*s7: s7.h5: features have dimension 3"):
        infer.ensure_results(cohort_from_dict({"compute": {"ray": "auto"}}, tmp_path), "v001")


def test_without_the_flag_ray_is_never_imported() -> None:
    code = ("import sys; from core.cli import build_parser; build_parser(['extract']); import core.model.features, "
            "core.model.infer, core.cohort.convert, core.cohort.cohort_file; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_ray_flag_parses_auto_and_address() -> None:
    from core.cli import build_parser

    for cmd in (["extract", "--slides", "s", "--out", "o"], ["infer", "--cohort", "c"], ["convert"]):
        parser = build_parser(cmd)
        assert parser.parse_args(cmd).ray is None
        assert parser.parse_args([*cmd, "--ray"]).ray == "auto"
        assert parser.parse_args([*cmd, "--ray", "10.1.2.3:6379"]).ray == "10.1.2.3:6379"
