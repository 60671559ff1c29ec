"""A cohort: where a study's slides, labels, features, models and database live (a small TOML file).

```toml
name = "demo"
slides = "slides"            # folder (searched recursively) or a list of paths
labels = "labels.csv"        # optional
features = "features"        # one <image_id>.h5 per slide
models = "models"            # one folder per model version
results = "results"          # predictions and attention per model version
database = "sqlite:///slidelens.db"   # any SQLAlchemy URL; relative sqlite paths are relative to this file
default_mpp = 0.5            # for slides whose file has no mpp
[patches]
patch_size = 256
target_mpp = 0.5
min_tissue = 0.25
[mpp]                        # per-slide mpp overrides
some_tma = 0.25
[compute]                    # optional: the app's bulk jobs (predicting every slide) run on a Ray cluster
ray = "auto"                 # "auto" (the cluster this machine joined) or the head's "host:port"
```
A labels file with an ``is_tma`` column (UBC-OCEAN's ``train.csv``) gives each slide whose file states no mpp its
mpp (0.25 / 0.5) unless ``[mpp]`` overrides it.
Relative paths are relative to the TOML file's folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.slides.slide import find_slides, image_id_for

COHORT_ENV = "SLIDELENS_COHORT"


@dataclass(frozen=True)
class Cohort:
    """Resolved, absolute paths and settings of one cohort."""

    name: str
    root: Path
    slide_sources: tuple[Path, ...]
    labels: Path | None
    features: Path
    models: Path
    results: Path
    database: str
    default_mpp: float | None = None
    patch_size: int = 256
    target_mpp: float = 0.5
    min_tissue: float = 0.25
    mpp_overrides: dict[str, float] = field(default_factory=dict)
    source: Path | None = None  # the TOML file, if any
    ray: str | None = None  # [compute] ray: the Ray cluster for bulk jobs ("auto" or host:port), None = local

    @cached_property
    def slide_paths(self) -> dict[str, Path]:
        """image_id -> slide file, for every slide of the cohort."""
        found: dict[str, Path] = {}
        for src in self.slide_sources:
            if src.is_dir():
                for k, v in find_slides(src).items():
                    found.setdefault(k, v)
            else:
                found.setdefault(image_id_for(src), src)
        return dict(sorted(found.items()))

    def slide_path(self, image_id: str) -> Path:
        try:
            return self.slide_paths[image_id]
        except KeyError:
            raise InputError(f"slide {image_id!r} is not in cohort {self.name!r}") from None

    @cached_property
    def slide_mpps(self) -> dict[str, float]:
        """Per-slide mpp: the labels file's ``is_tma`` column (UBC-OCEAN: 0.25 TMA, 0.5 whole slide) for slides whose
        file states none (PNG, JPEG, TIFFs without resolution), overridden by the cohort's ``[mpp]`` table."""
        from core.cohort.labels import mpps_from_labels
        from core.slides.image_headers import records_mpp

        paths = self.slide_paths
        from_labels = {i: m for i, m in mpps_from_labels(self.labels).items()
                       if i in paths and not records_mpp(paths[i])}
        return {**from_labels, **self.mpp_overrides}

    def mpp_for(self, image_id: str) -> float | None:
        """The per-slide mpp (``slide_mpps``), if any (the slide's own mpp and default_mpp apply otherwise)."""
        return self.slide_mpps.get(image_id)

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    def to_toml(self) -> str:
        """Serialise with paths relative to ``root`` where possible."""
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(self.root))
            except ValueError:
                return str(p)

        slides = [rel(p) for p in self.slide_sources]
        database = self.database
        if database.startswith("sqlite:///") and database != "sqlite:///:memory:":
            database = "sqlite:///" + rel(Path(database[len("sqlite:///"):]))
        lines = [f"name = {_q(self.name)}",
                 f"slides = {_q(slides[0])}" if len(slides) == 1 else f"slides = [{', '.join(map(_q, slides))}]"]
        if self.labels is not None:
            lines.append(f"labels = {_q(rel(self.labels))}")
        lines += [f"features = {_q(rel(self.features))}", f"models = {_q(rel(self.models))}",
                  f"results = {_q(rel(self.results))}", f"database = {_q(database)}"]
        if self.default_mpp is not None:
            lines.append(f"default_mpp = {self.default_mpp}")
        lines += ["", "[patches]", f"patch_size = {self.patch_size}", f"target_mpp = {self.target_mpp}",
                  f"min_tissue = {self.min_tissue}"]
        if self.mpp_overrides:
            lines += ["", "[mpp]"] + [f"{_q(k)} = {v}" for k, v in sorted(self.mpp_overrides.items())]
        if self.ray:
            lines += ["", "[compute]", f"ray = {_q(self.ray)}"]
        return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cohort_from_dict(data: dict[str, Any], root: Path, source: Path | None = None) -> Cohort:
    """Build a cohort from parsed TOML, resolving relative paths against ``root``."""
    root = root.resolve()

    def path(key: str, default: str | None) -> Path | None:
        val = data.get(key, default)
        if val is None:
            return None
        p = Path(os.path.expanduser(str(val)))
        return p if p.is_absolute() else root / p

    slides = data.get("slides", "slides")
    slide_list = slides if isinstance(slides, list) else [slides]
    sources = tuple((Path(s) if Path(s).is_absolute() else root / s) for s in slide_list)
    db = str(data.get("database", "sqlite:///slidelens.db"))
    if db.startswith("sqlite:///") and not db.startswith("sqlite:////") and db != "sqlite:///:memory:":
        db = "sqlite:///" + str(root / db[len("sqlite:///"):])
    patches = data.get("patches", {})
    compute = data.get("compute", {})
    ray = compute.get("ray") if isinstance(compute, dict) else None
    if ray is not None and (not isinstance(ray, str) or not ray.strip()):
        raise InputError(f"{source or root}: [compute] ray must be \"auto\" or a Ray head address \"host:port\"")
    try:
        return Cohort(
            name=str(data.get("name", root.name)), root=root, slide_sources=sources,
            labels=path("labels", None), features=path("features", "features"), models=path("models", "models"),
            results=path("results", "results"), database=db,
            default_mpp=float(data["default_mpp"]) if data.get("default_mpp") is not None else None,
            patch_size=int(patches.get("patch_size", 256)), target_mpp=float(patches.get("target_mpp", 0.5)),
            min_tissue=float(patches.get("min_tissue", 0.25)),
            mpp_overrides={str(k): float(v) for k, v in data.get("mpp", {}).items()}, source=source,
            ray=ray.strip() if ray else None)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source or root}: invalid cohort setting ({exc})") from exc


def load_cohort(path: str | Path) -> Cohort:
    """Load a cohort TOML file (or a folder holding ``cohort.toml``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "cohort.toml"
    if not path.is_file():
        raise InputError(f"{path}: cohort file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return cohort_from_dict(data, path.parent, source=path)


def checked_cohort_file(typed: str) -> Path:
    """The cohort file a typed path names (a folder means its cohort.toml), opened once to prove it is a cohort;
    ``InputError`` (one line naming the file) otherwise, so a bad path never replaces the working cohort."""
    p = Path(typed.strip()).expanduser()
    p = p / "cohort.toml" if p.is_dir() else p
    if not p.is_file():
        raise InputError(f"{p}: cohort file not found")
    cohort = load_cohort(p)  # raises InputError naming the file: not TOML, not a cohort setting ...
    if not any(Path(src).exists() for src in cohort.slide_sources):
        raise InputError(f"{p}: not a cohort file (its slides, {', '.join(map(str, cohort.slide_sources))}, "
                         "do not exist)")
    return p


def demo_dir() -> Path:
    """Where the app builds and finds the demo cohort: ``$SLIDELENS_DEMO_DIR`` or ``data/demo``."""
    return Path(os.environ.get("SLIDELENS_DEMO_DIR") or "data/demo")


def default_cohort_path() -> Path:
    """The cohort the app opens: ``$SLIDELENS_COHORT`` or the demo cohort."""
    return Path(os.environ.get(COHORT_ENV) or demo_dir() / "cohort.toml")
