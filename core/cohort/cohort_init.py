"""``cohort init``: check a user's slides, labels, features and models, then write a cohort TOML.

Every problem is collected into one report before anything is written; the TOML is written atomically and only
when nothing fatal was found, so a broken folder never leaves a half cohort behind.

Slides are checked from their headers (PNG IHDR, JPEG SOF, TIFF tags; OpenSlide formats are opened, which reads
their directory and a corner of the smallest level): nothing is decoded whole and nothing is converted, so a
folder of 538 UBC-OCEAN PNGs is checked in seconds. Images that need a pyramid are converted on first view or in
bulk with ``python -m core convert``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import write_text_atomic
from core.cohort.cohort_file import Cohort, cohort_from_dict
from core.cohort.labels import read_labels, sizes_from_labels
from core.errors import InputError, SlideLensError
from core.slides.image_headers import CONVERT, read_header
from core.slides.pyramid import has_pyramid
from core.slides.slide import find_slides, open_slide


@dataclass
class CohortReport:
    """What ``check_cohort`` found: fatal ``errors`` block writing; ``warnings`` are reported but allowed."""

    slides: dict[str, Path] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    unlabelled: list[str] = field(default_factory=list)
    labels_without_slides: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    without_features: list[str] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # level-0 (width, height) from the headers
    to_convert: list[str] = field(default_factory=list)  # images whose pyramid is not cached yet
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def gigapixels_to_convert(self) -> float:
        return sum(self.sizes.get(i, (0, 0))[0] * self.sizes.get(i, (0, 0))[1] for i in self.to_convert) / 1e9

    def lines(self, cohort_file: Path | None = None) -> list[str]:
        """Human-readable report, one finding per line."""
        out = [f"{len(self.slides)} slide(s); classes: {', '.join(self.classes) or 'none (no labels)'}"]
        if self.to_convert:
            target = cohort_file or "COHORT.toml"
            gpx = self.gigapixels_to_convert
            size = f"{gpx:.1f} gigapixels" if gpx >= 0.1 else f"{gpx * 1000:.0f} megapixels"
            out.append(f"{len(self.to_convert)} image(s) ({size}) are converted to pyramids on first view, or all "
                       f"now with: python -m core convert --cohort {target}")
        out += [f"error: {e}" for e in self.errors]
        out += [f"warning: {w}" for w in self.warnings]
        return out


def _preview(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" ... (+{len(ids) - n})" if len(ids) > n else "")


def check_cohort(slides: Path, labels: Path | None = None, features: Path | None = None,
                 classes: list[str] | None = None, open_slides: bool = True, strict: bool = False,
                 cache_dir: Path | None = None) -> CohortReport:
    """Check every path and file; with ``strict`` warnings (unlabelled, unreadable, ...) become errors.

    Slides are checked from their headers: nothing is converted (``to_convert`` lists the images whose pyramid is
    not under ``cache_dir`` yet). OpenSlide formats and tiled OME-TIFFs are opened (cheap); a labels file with
    ``image_width``/``image_height`` columns (UBC-OCEAN) is checked against the headers' sizes.
    """
    rep = CohortReport()
    if not slides.exists():
        rep.errors.append(f"{slides}: slides folder not found")
        return rep
    rep.slides = find_slides(slides) if slides.is_dir() else {slides.stem: slides}
    if not rep.slides:
        rep.errors.append(f"{slides}: no slide files found (looked for .svs .tif .tiff .ndpi .mrxs .dcm .png .jpg ...)")
        return rep
    if open_slides:
        _check_slides(rep, cache_dir or Path(tempfile.gettempdir()) / "slidelens-check")
    if labels is not None:
        try:
            table = read_labels(labels, classes=classes)
        except InputError as exc:
            rep.errors.append(str(exc))
        else:
            rep.classes = table.classes
            labelled = set(table.df["image_id"])
            rep.unlabelled = sorted(set(rep.slides) - labelled)
            rep.labels_without_slides = sorted(labelled - set(rep.slides))
            if rep.unlabelled:
                rep.warnings.append(f"{len(rep.unlabelled)} slide(s) without a label: {_preview(rep.unlabelled)}")
            if rep.labels_without_slides:
                rep.warnings.append(f"{labels}: {len(rep.labels_without_slides)} label(s) without a slide: "
                                    f"{_preview(rep.labels_without_slides)}")
            _check_sizes(rep, labels)
    if features is not None and features.is_dir():
        rep.without_features = sorted(i for i in rep.slides if not (features / f"{i}.h5").is_file())
        if rep.without_features:
            rep.warnings.append(f"{len(rep.without_features)} slide(s) without features yet "
                                f"(run python -m core extract): {_preview(rep.without_features)}")
    elif features is not None:
        rep.warnings.append(f"{features}: features folder does not exist yet (it will be created by extract)")
    if strict and rep.warnings:
        rep.errors += rep.warnings
        rep.warnings = []
    return rep


def _check_slides(rep: CohortReport, cache_dir: Path) -> None:
    """Read every slide's header (opening OpenSlide formats); converts nothing."""
    for image_id, path in rep.slides.items():
        try:
            header = read_header(path)
            if header.route != CONVERT:  # OpenSlide and tiled OME-TIFF: opening reads no more than a corner
                slide = open_slide(path, validate=True, cache_dir=cache_dir)
                rep.sizes[image_id] = slide.dimensions
                slide.close()
            else:
                rep.sizes[image_id] = (header.width or 0, header.height or 0)
                if not has_pyramid(path, cache_dir):
                    rep.to_convert.append(image_id)
        except SlideLensError as exc:
            rep.unreadable[image_id] = str(exc)
        except OSError as exc:
            rep.unreadable[image_id] = f"{path}: cannot read ({exc.strerror or exc})"
    if rep.unreadable:
        rep.warnings += [f"unreadable slide {msg}" for msg in rep.unreadable.values()]


def _check_sizes(rep: CohortReport, labels: Path) -> None:
    """A labels file that records each image's size (UBC-OCEAN's train.csv) must agree with the headers."""
    listed = sizes_from_labels(labels)
    wrong = [f"{i} (header {rep.sizes[i][0]}x{rep.sizes[i][1]}, labels {w}x{h})"
             for i, (w, h) in sorted(listed.items()) if i in rep.sizes and rep.sizes[i] != (w, h)]
    if wrong:
        rep.warnings.append(f"{labels}: {len(wrong)} image size(s) differ from the file's header: {_preview(wrong)}")


def init_cohort(out: Path, slides: Path, labels: Path | None = None, *, name: str | None = None,
                features: Path | None = None, models: Path | None = None, results: Path | None = None,
                database: str | None = None, default_mpp: float | None = None, patch_size: int = 256,
                target_mpp: float = 0.5, classes: list[str] | None = None, strict: bool = False,
                open_slides: bool = True) -> tuple[CohortReport, Cohort | None]:
    """Check the inputs and, if nothing fatal was found, write ``out`` (a cohort TOML) atomically."""
    out = out if out.suffix == ".toml" else out / "cohort.toml"
    root = out.parent.resolve()
    features = features or root / "features"
    rep = check_cohort(slides.resolve(), labels.resolve() if labels else None, features, classes=classes,
                       open_slides=open_slides, strict=strict, cache_dir=root / ".cache")
    if out.exists() and out.is_dir():
        rep.errors.append(f"{out}: is a directory")
    if not rep.ok:
        return rep, None
    data: dict = {"name": name or root.name, "slides": str(slides.resolve()), "features": str(features),
                  "models": str(models or root / "models"), "results": str(results or root / "results"),
                  "database": database or "sqlite:///slidelens.db",
                  "patches": {"patch_size": patch_size, "target_mpp": target_mpp}}
    if labels is not None:
        data["labels"] = str(labels.resolve())
    if default_mpp is not None:
        data["default_mpp"] = default_mpp
    cohort = cohort_from_dict(data, root, source=out.resolve())
    write_text_atomic(out, cohort.to_toml())
    return rep, cohort
