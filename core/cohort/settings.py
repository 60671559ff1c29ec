"""Settings: one frozen dataclass, resolved as defaults -> environment -> TOML file -> overrides.

Environment variables are ``SLIDELENS_<FIELD>`` (e.g. ``SLIDELENS_TARGET_MPP=0.25``); the file is the one named by
``SLIDELENS_CONFIG`` or ``slidelens.toml`` in the working directory, with the same field names at top level.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError

ENV_PREFIX = "SLIDELENS_"


@dataclass(frozen=True)
class Settings:
    """Everything tunable in one place. Paths are relative to the working directory unless absolute."""

    data_dir: Path = Path("data")
    cache_dir: Path | None = None  # default: <data_dir>/.cache
    default_mpp: float | None = None  # used for slides whose file carries no mpp and that have no override
    target_mpp: float = 0.5  # patch grid resolution (0.5 um/px = 20x)
    patch_size: int = 256  # patch side in pixels at target_mpp
    min_tissue: float = 0.25  # minimum tissue fraction for a patch to be kept
    thumbnail_size: int = 2048  # longest side of the thumbnail used for tissue detection
    slide_cache_size: int = 32  # open slide handles kept in the LRU
    backbone: str = "efficientnet_lite0"
    batch_size: int = 64
    num_workers: int | None = None  # patch-reading processes; None: core.model.features.default_workers
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    db_url: str | None = None  # default: sqlite:///<data_dir>/slidelens.db
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.data_dir) / ".cache"


def _coerce(name: str, raw: Any) -> Any:
    """Convert a raw (string or TOML) value into the type of the named field."""
    f = {f.name: f for f in dataclasses.fields(Settings)}[name]
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
        return None
    typ = str(f.type)
    try:
        if "Path" in typ:
            return Path(raw)
        if typ.startswith("float"):
            return float(raw)
        if typ.startswith("int"):
            return int(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"setting {name}: {raw!r} is not a valid {typ}") from exc
    return raw


def load_settings(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, ``SLIDELENS_*`` variables, the config file and explicit overrides."""
    env = os.environ if env is None else env
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "extra"]
    values: dict[str, Any] = {}
    for name in names:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key])
    cfg_path = Path(env.get(ENV_PREFIX + "CONFIG", "slidelens.toml"))
    if cfg_path.is_file():
        try:
            data = tomllib.loads(cfg_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{cfg_path}: invalid TOML ({exc})") from exc
        extra = {k: v for k, v in data.items() if k not in names}
        values.update({k: _coerce(k, v) for k, v in data.items() if k in names})
        values["extra"] = extra
    for k, v in (overrides or {}).items():
        if k not in names:
            raise InputError(f"unknown setting {k!r}")
        values[k] = v if not isinstance(v, str) else _coerce(k, v)
    return Settings(**values)


def resolve_device(spec: str = "auto") -> str:
    """Map 'auto' to 'cuda' when a GPU is visible, else 'cpu'. Imports torch lazily."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
