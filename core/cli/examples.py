"""One worked example per command, shown at the end of its ``--help`` (``python -m core <command> --help``)."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "analyze": "python -m core analyze --cohort data/demo/cohort.toml --out data/demo/analysis\n"
               "python -m core analyze --predictions models/ --labels labels.csv --out analysis/   # newest version",
    "annotations": "python -m core annotations import wsi_018.geojson --slide wsi_018 --reviewer ann "
                   "--cohort study/cohort.toml",
    "annotations import": "python -m core annotations import qupath_export/ --reviewer ann --cohort study/cohort.toml"
                          "   # a folder of <image_id>.geojson",
    "annotations export": "python -m core annotations export --out annotations/ --cohort study/cohort.toml",
    "annotations patches": "python -m core annotations patches --class Tumour --out tumour_patches.csv "
                           "--cohort study/cohort.toml",
    "bench": "python -m core bench tiles --json docs/bench/tiles.json",
    "cohort": "python -m core cohort init --slides train_images --labels train.csv --out study/cohort.toml",
    "cohort init": "python -m core cohort init --slides train_images --labels train.csv --out study/cohort.toml",
    "cohort show": "python -m core cohort show study/cohort.toml",
    "convert": "python -m core convert --cohort study/cohort.toml --workers 2",
    "db": "python -m core db status --cohort study/cohort.toml",
    "db status": "python -m core db status --cohort study/cohort.toml",
    "db history": "python -m core db history wsi_018 --cohort study/cohort.toml",
    "db apply": "python -m core db apply fixes.csv --reviewer ann --reason 'second read' --cohort study/cohort.toml",
    "demo": "python -m core demo --out data/demo --seed 0",
    "ensemble": "python -m core ensemble --cohort study/cohort.toml --versions v001-abmil,v002-transmil "
                "--method soft",
    "export": "python -m core export --cohort study/cohort.toml --out labels_v2.csv",
    "extract": "python -m core extract --cohort study/cohort.toml --workers 2",
    "firstrun": "python -m core firstrun --out data/demo",
    "infer": "python -m core infer --model models/ --features features/ --out results/   # newest version\n"
             "python -m core infer --cohort study/cohort.toml --version v002-abmil",
    "info": "python -m core info slide.svs --json",
    "patches": "python -m core patches slide.svs --png grid.png",
    "train": "python -m core train --features features/ --labels labels.csv --model abmil --out models/",
}


def add_examples(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Set ``epilog`` (kept as written) on every subcommand that has an example, recursively."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            key = f"{prefix} {name}".strip()
            if key in EXAMPLES and not sub.epilog:
                sub.epilog = "example:\n  " + EXAMPLES[key].replace("\n", "\n  ")
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
            if not key.startswith("bench "):  # each benchmark documents itself in its module
                add_examples(sub, key)
