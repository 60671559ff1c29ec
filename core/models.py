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
from pathlib import Path
from typing import Any

from core.errors import InputError

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
OOF_CSV = "oof_predictions.csv"
OOD_FILE = "ood.safetensors"
REQUIRED_FILES = (MODEL_JSON, WEIGHTS)
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
    if missing:
        raise InputError(f"{model_dir}: incomplete model folder (missing {', '.join(missing)})")
    try:
        meta = json.loads((model_dir / MODEL_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{model_dir / MODEL_JSON}: not valid JSON ({exc})") from exc
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
    """Write JSON to ``path`` through a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
