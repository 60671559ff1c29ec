"""Test data for decks and presentation mode: three synthetic slides, the last without attention, and a deck."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests._viewer_data import PATCH, grid_coords, write_attention, write_pyramid

VERSION = "v001-abmil"
SIZES = {"case_a": (2048, 1536), "case_b": (1600, 1200), "case_c": (1200, 900)}
HOT = {"case_a": [(1500, 300), (400, 1100)], "case_b": [(800, 600), (1300, 200)]}  # attention peaks (x, y)


def build_present_cohort(root: Path) -> Path:
    """A cohort with class names, predictions for all three slides, attention for case_a and case_b only."""
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    att_dir = root / "results" / VERSION / "attention"
    for seed, (name, (w, h)) in enumerate(SIZES.items(), start=3):
        write_pyramid(slides / f"{name}.tiff", w, h, levels=4, seed=seed)
        if name in HOT:
            coords = grid_coords(w, h)
            centres = coords + PATCH / 2
            a = np.full(len(coords), 0.01)
            for k, (x, y) in enumerate(HOT[name]):
                a += (1.0 - 0.3 * k) * np.exp(-((centres - [x, y]) ** 2).sum(axis=1) / (2 * 110.0**2))
            a = a / a.sum()
            write_attention(att_dir / f"{name}.h5", coords, np.stack([a * 0.5, a], axis=1), version=VERSION)
    (root / "results" / VERSION / "predictions.csv").write_text(
        "image_id,pred,prob_benign,prob_tumor,ood_score\n"
        "case_a,tumor,0.13,0.87,0.1\ncase_b,tumor,0.45,0.55,0.2\ncase_c,benign,0.9,0.1,0.1\n")
    mdir = root / "models" / VERSION
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "oof_predictions.csv").write_text(  # errors are judged on these: case_b is the one error
        "image_id,pred,prob_benign,prob_tumor\ncase_a,tumor,0.2,0.8\ncase_b,tumor,0.4,0.6\ncase_c,benign,0.8,0.2\n")
    (root / "labels.csv").write_text("image_id,label\ncase_a,tumor\ncase_b,benign\ncase_c,benign\n")
    toml = root / "cohort.toml"
    toml.write_text('name = "presenttest"\nslides = ["slides"]\nlabels = "labels.csv"\n'
                    'database = "sqlite:///slidelens.db"\n\n[class_names]\n'
                    'tumor = "invasive carcinoma"\nbenign = "benign breast tissue"\n')
    return toml


def build_deck(toml: Path, name: str = "Tumour board") -> tuple[object, object, object]:
    """(cohort, store, deck) with the three cases in the order case_b, case_a, case_c and talking points."""
    from core.cohort.cohort_file import load_cohort
    from core.cohort.labels import read_labels
    from core.review.store import open_store

    cohort = load_cohort(toml)
    store = open_store(cohort.database)
    store.set_classes(["benign", "tumor"])
    store.sync_slides(list(SIZES), read_labels(cohort.labels))
    deck = store.create_deck(name, "alice", model_version=VERSION)
    for sid, tp in [("case_b", "The model hesitates here: <look> at the glands."), ("case_a", "A clear case."),
                    ("case_c", "")]:
        deck = store.add_to_deck(deck.id, sid, "alice", deck.version, talking_point=tp)
    return cohort, store, deck
