"""The command line guides: a folder of model versions means its newest (and says so), every command's --help
ends with a worked example."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest
from test_train_infer import write_cohort

from core.cli import build_parser
from core.cli import main as cli_main
from core.errors import InputError
from core.model.train import train_model
from core.model.versions import resolve_model_arg


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{prefix} {name}".strip()
                out.append((key, sub))
                if key != "bench":
                    out += _subcommands(sub, key)
    return out


def test_every_command_help_shows_a_worked_example() -> None:
    commands = _subcommands(build_parser([]))
    assert {"train", "infer", "analyze", "export", "cohort init", "db apply"} <= {k for k, _ in commands}
    missing = [k for k, sub in commands if "python -m core" not in (sub.format_help().split("example:")[-1]
                                                                    if "example:" in sub.format_help() else "")]
    assert missing == []


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    write_cohort(root, per_class=3)
    for model in ("abmil", "abmil"):
        train_model(root / "features", root / "labels.csv", model=model, out_dir=root / "models", folds=2, epochs=2)
    return root


def test_infer_on_a_folder_of_versions_takes_the_newest_and_says_so(two_versions: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = two_versions
    rc = cli_main(["infer", "--model", str(root / "models"), "--features", str(root / "features"),
                   "--out", str(root / "results")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "using the newest model version v002-abmil" in err and "others: v001-abmil" in err
    assert len(pd.read_csv(root / "results" / "predictions.csv")) == 9


def test_a_folder_that_holds_no_model_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "models" / "notes").mkdir(parents=True)
    with pytest.raises(InputError, match="neither a model folder .* it holds notes"):
        resolve_model_arg(tmp_path / "models")
    with pytest.raises(InputError, match="model folder not found"):
        resolve_model_arg(tmp_path / "nothere")


def test_analyze_takes_a_folder_of_versions(two_versions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = two_versions
    rc = cli_main(["analyze", "--predictions", str(root / "models"), "--labels", str(root / "labels.csv"),
                   "--out", str(root / "analysis")])
    assert rc == 0
    assert "v002-abmil" in capsys.readouterr().err and (root / "analysis" / "metrics.json").is_file()


def test_export_into_a_folder_writes_the_default_file_name(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from _review_data import make_review_cohort

    toml = make_review_cohort(tmp_path / "c")
    (tmp_path / "out").mkdir()
    assert cli_main(["export", "--cohort", str(toml.parent), "--out", str(tmp_path / "out")]) == 0
    assert "labels_reviewed.csv" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "out" / "labels_reviewed.csv")) == 8


def test_analyze_on_a_cohort_scores_the_reviewed_labels_like_the_pages(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from _review_data import make_review_cohort

    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store
    from core.review.summary import cohort_summary

    toml = make_review_cohort(tmp_path / "c")
    cohort = load_cohort(toml)
    store = open_cohort_store(cohort)
    store.set_label("s01", "tumor", "ann", "model is right", store.state("s01").version)
    assert cli_main(["analyze", "--cohort", str(toml), "--out", str(tmp_path / "rep")]) == 0
    assert "against the reviewed labels" in capsys.readouterr().err
    ba = json.loads((tmp_path / "rep" / "metrics.json").read_text())["overall"]["balanced_accuracy"]
    assert ba == pytest.approx(cohort_summary(cohort).balanced_accuracy) == pytest.approx(1.0)
