"""Model folders: ``<models>/<version>/`` with model.json, weights.safetensors, oof_predictions.csv (+ ood.safetensors).

Versions are auto-numbered across the models directory: ``v001-abmil``, ``v002-transmil``, ... A folder is written
under a temporary name and renamed into place, so a half-written model never shows up as a version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from core.model.health import health_warnings, is_healthy

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
OOF_CSV = "oof_predictions.csv"
OOD_FILE = "ood.safetensors"
TISSUE_OOD_FILE = "tissue_ood.safetensors"  # the patch-feature outlier reference (core/model/tissue_ood.py)
REQUIRED_FILES = (MODEL_JSON, WEIGHTS)
FOLDS_DIR = "folds"  # folds/fold<k>.safetensors (+ fold<k>.ood.safetensors): the k fold models of a training run
ENSEMBLE = "ensemble"  # model.json key of an ensemble version: {"method", "members": [...]} instead of weights


def fold_weights(fold: int) -> str:
    """Path, inside a version folder, of fold ``fold``'s weights."""
    return f"{FOLDS_DIR}/fold{int(fold)}.safetensors"


def fold_ood(fold: int) -> str:
    """Path, inside a version folder, of fold ``fold``'s OOD reference."""
    return f"{FOLDS_DIR}/fold{int(fold)}.ood.safetensors"


def is_ensemble(meta: dict[str, Any]) -> bool:
    """True for an ensemble version's model.json (it names members and a method instead of holding weights)."""
    return isinstance(meta.get(ENSEMBLE), dict)
VERSION_RE = re.compile(r"^v(\d{3,})-([A-Za-z0-9_]+)$")


def version_number(version: str) -> int | None:
    """The number of a version name ``v012-abmil`` -> 12; ``None`` for other names."""
    m = VERSION_RE.match(version)
    return int(m.group(1)) if m else None


def _version_dirs(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        return []
    dirs = [p for p in models_dir.iterdir() if p.is_dir() and version_number(p.name) is not None
            and (p / MODEL_JSON).is_file()]
    return sorted(dirs, key=lambda p: (version_number(p.name), p.name))


def list_versions(models_dir: str | Path) -> list[dict[str, Any]]:
    """model.json contents of every complete version in ``models_dir``, oldest first (unreadable ones skipped)."""
    out = []
    for d in _version_dirs(Path(models_dir)):
        try:
            out.append(read_model_meta(d))
        except InputError:
            continue
    return out


def versions_with_predictions(models_dir: str | Path, results_dir: str | Path | None = None) -> list[str]:
    """Versions with something to show, oldest first: a model folder with out-of-fold predictions, or
    ``results_dir/<version>/predictions.csv`` (predictions made elsewhere can be analysed without weights)."""
    found: set[str] = set()
    models_dir = Path(models_dir)
    if models_dir.is_dir():
        found |= {p.name for p in models_dir.iterdir() if (p / OOF_CSV).is_file()}
    if results_dir is not None and Path(results_dir).is_dir():
        found |= {p.name for p in Path(results_dir).iterdir() if (p / "predictions.csv").is_file()}
    return sorted(found, key=lambda v: (version_number(v) is None, version_number(v) or 0, v))


def default_version(models_dir: str | Path, results_dir: str | Path | None = None,
                    among: Sequence[str] | None = None) -> str | None:
    """The version a page opens by default, from ``among`` (oldest first; default: every version with something to
    show, else every complete version): the newest with final predictions (``results_dir/<v>/predictions.csv``),
    else the newest with out-of-fold predictions, else the newest. A newer version still without predictions (a
    retrain in progress, failed or killed) is never preferred over an older one that has them, and a version whose
    model.json health says ``ok: false`` (core/model/health.py) never over a healthy one."""
    models_dir = Path(models_dir)
    if among is None:
        among = versions_with_predictions(models_dir, results_dir) or [m["version"] for m in list_versions(models_dir)]
    among = [str(v) for v in among]
    among = [v for v in among if version_is_healthy(models_dir, v)] or among  # all unhealthy: the rule below

    def final(v: str) -> bool:
        return results_dir is not None and (Path(results_dir) / v / "predictions.csv").is_file()

    for has in (final, lambda v: (models_dir / v / OOF_CSV).is_file()):
        hits = [v for v in among if has(v)]
        if hits:
            return hits[-1]
    return among[-1] if among else None


def version_is_healthy(models_dir: str | Path, version: str) -> bool:
    """False when ``version``'s model.json records an unhealthy model; a missing or unreadable one counts as healthy
    (predictions made elsewhere, versions from before health was judged)."""
    try:
        meta = json.loads((Path(models_dir) / version / MODEL_JSON).read_text())
    except (OSError, ValueError):
        return True
    return not isinstance(meta, dict) or is_healthy(meta)


def version_label(models_dir: str | Path, version: str) -> str:
    """A version's name for a selector: ``v004-dsmil ⚠`` when its model.json records an unhealthy model."""
    return version if version_is_healthy(models_dir, version) else f"{version} \u26a0"


def health_note(models_dir: str | Path, version: str, results_dir: str | Path | None = None) -> str | None:
    """One line for a page or the command line when ``version`` is unhealthy (None otherwise): its warnings, and
    whether it is the default all the same (only when no healthy version has something to show)."""
    try:
        meta = read_model_meta(Path(models_dir) / version)
    except InputError:
        return None
    warnings = health_warnings(meta)
    if not warnings:
        return None
    if default_version(models_dir, results_dir) == version:
        return f"{version} was registered and is the default only because no healthy version exists: " + \
            "; ".join(warnings)
    return f"{version} was registered but is not the default: " + "; ".join(warnings)


def default_index(versions: Sequence[str], models_dir: str | Path, results_dir: str | Path | None = None) -> int:
    """Index of :func:`default_version` in ``versions`` (for a page's version selectbox; the last one otherwise)."""
    versions = list(versions)
    chosen = default_version(models_dir, results_dir, among=versions)
    return versions.index(chosen) if chosen in versions else max(len(versions) - 1, 0)


def latest_version(models_dir: str | Path) -> str | None:
    """Name of the newest complete version in ``models_dir``, or ``None`` when there is none."""
    versions = list_versions(models_dir)
    return versions[-1]["version"] if versions else None


def resolve_model_dir(models_dir: str | Path, version: str | None = None) -> Path:
    """The folder of ``version`` (the latest when ``None``); ``InputError`` when there is no such model."""
    models_dir = Path(models_dir)
    version = version or latest_version(models_dir)
    if version is None:
        raise InputError(f"{models_dir}: no trained model yet (run `python -m core train`)")
    path = models_dir / version
    if not (path / MODEL_JSON).is_file():
        raise InputError(f"{path}: no such model version")
    return path


def read_model_meta(model_dir: str | Path) -> dict[str, Any]:
    """Read and check ``model.json`` (and that the weights exist); ``InputError`` naming what is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model folder not found")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if MODEL_JSON in missing:
        raise InputError(f"{model_dir}: incomplete model folder (missing {', '.join(missing)})")
    try:
        meta = json.loads((model_dir / MODEL_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{model_dir / MODEL_JSON}: not valid JSON ({exc})") from exc
    if missing and not (isinstance(meta, dict) and is_ensemble(meta)):  # an ensemble names members, has no weights
        raise InputError(f"{model_dir}: incomplete model folder (missing {', '.join(missing)})")
    need = [k for k in ("model", "classes", "feature_dim") if k not in meta]
    if need:
        raise InputError(f"{model_dir / MODEL_JSON}: missing key(s) {', '.join(need)}")
    meta.setdefault("version", model_dir.name)
    return meta


def next_version(models_dir: str | Path, model: str) -> str:
    """The next free version name for ``model``: one more than the highest number in ``models_dir``."""
    models_dir = Path(models_dir)
    nums = [version_number(p.name) or 0 for p in models_dir.iterdir()] if models_dir.is_dir() else []
    return f"v{max(nums, default=0) + 1:03d}-{model}"


def new_staging_dir(models_dir: str | Path) -> Path:
    """A temporary folder inside ``models_dir`` to write a model into before ``publish``."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))


def publish(staging: Path, models_dir: str | Path, model: str) -> Path:
    """Rename a finished staging folder to the next version (retrying if another writer took the number)."""
    models_dir = Path(models_dir)
    for _ in range(100):
        version = next_version(models_dir, model)
        meta_path = staging / MODEL_JSON
        meta = json.loads(meta_path.read_text())
        meta["version"] = version
        write_json_atomic(meta_path, meta)
        target = models_dir / version
        try:
            os.rename(staging, target)  # atomic; fails if the target exists (non-empty)
        except OSError:
            if target.exists():
                continue
            raise
        return target
    shutil.rmtree(staging, ignore_errors=True)
    raise InputError(f"{models_dir}: could not allocate a model version")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file and ``os.replace`` (arrays and paths as lists and strings)."""
    atomic.write_json_atomic(path, data, default=_json_default)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def resolve_model_arg(path: str | Path) -> tuple[Path, str | None]:
    """What a user means by a ``--model`` path: a model version folder as it is, or, for a folder of versions (what
    ``train --out`` writes into), its newest complete version. Returns (folder, a note saying which was taken or
    None); ``InputError`` listing what is there otherwise."""
    path = Path(path)
    if (path / MODEL_JSON).is_file():
        return path, None
    if not path.is_dir():
        raise InputError(f"{path}: model folder not found")
    versions = [d.name for d in _version_dirs(path)]
    if versions:
        others = f"; others: {', '.join(versions[:-1])} (pick one with --model {path / versions[0]})" \
            if len(versions) > 1 else ""
        return path / versions[-1], f"using the newest model version {versions[-1]} in {path}{others}"
    stray = sorted(p.name for p in path.iterdir() if p.is_dir())[:5]
    raise InputError(f"{path}: neither a model folder (no {MODEL_JSON}) nor a folder of model versions (vNNN-<model>)"
                     + (f"; it holds {', '.join(stray)}" if stray else ""))
