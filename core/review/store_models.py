"""The review database's model versions and the predictions stored for them (a part of ``core.review.store.Store``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
from sqlalchemy import insert, select, update

from core.errors import InputError
from core.review import store_schema as S
from core.review.store_types import now_iso


class ModelsMixin:
    """Model versions and predictions; the class using it provides ``_read()`` and ``_write()`` transactions."""

    def _read(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def _write(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def register_model_version(self, meta: Mapping[str, Any]) -> None:
        """Record a model version from its model.json content (idempotent: re-registering updates it)."""
        version = str(meta.get("version") or "")
        if not version:
            raise InputError("model metadata has no 'version'")
        row = dict(model=str(meta.get("model", "")), classes=json.dumps(list(meta.get("classes", []))),
                   created=meta.get("created"), meta=json.dumps(dict(meta), default=str), registered_at=now_iso())
        with self._write() as conn:
            exists = conn.execute(select(S.model_versions.c.version)
                                  .where(S.model_versions.c.version == version)).first()
            if exists:
                conn.execute(update(S.model_versions).where(S.model_versions.c.version == version).values(**row))
            else:
                conn.execute(insert(S.model_versions).values(version=version, **row))

    def model_versions(self) -> list[dict[str, Any]]:
        """Registered model versions, oldest first (each is its model.json content)."""
        with self._read() as conn:
            rows = conn.execute(select(S.model_versions).order_by(S.model_versions.c.version)).mappings().all()
        return [json.loads(r["meta"]) for r in rows]

    def record_predictions(self, version: str, df: pd.DataFrame) -> int:
        """Store a predictions table (image_id, pred, prob_<class>..., ood_score) for a model version."""
        if "image_id" not in df.columns:
            raise InputError(f"predictions for {version}: no image_id column")
        probs = [c for c in df.columns if c.startswith("prob_")]
        rows = [dict(model_version=version, image_id=str(r["image_id"]), pred=None if pd.isna(r.get("pred"))
                     else str(r.get("pred")), probs=json.dumps({c[5:]: float(r[c]) for c in probs}),
                     ood_score=None if "ood_score" not in df.columns or pd.isna(r["ood_score"])
                     else float(r["ood_score"])) for r in df.to_dict("records")]
        with self._write() as conn:
            conn.execute(S.predictions.delete().where(S.predictions.c.model_version == version))
            if rows:
                conn.execute(insert(S.predictions), rows)
        return len(rows)

    def predictions(self, version: str) -> pd.DataFrame:
        """A stored predictions table in the predictions.csv layout."""
        with self._read() as conn:
            rows = conn.execute(select(S.predictions).where(S.predictions.c.model_version == version)).mappings().all()
        recs = [{"image_id": r["image_id"], "pred": r["pred"],
                 **{f"prob_{k}": v for k, v in json.loads(r["probs"]).items()}, "ood_score": r["ood_score"]}
                for r in rows]
        return pd.DataFrame(recs)
