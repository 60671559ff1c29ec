"""The first run's background part: the backbone made ready in a thread while slides are drawn, and the rest of a
progressive demo's slides added one at a time (see ``core.demo.firstrun`` and ``core.demo.progressive``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class Warmup:
    """Creates the default backbone (exporting its ONNX graph on a first run) in a thread, started at once."""

    def __init__(self, start: bool = True) -> None:
        import threading

        self._result: list[object] = []
        self._thread = threading.Thread(target=self._make, daemon=True)
        if start:
            self._thread.start()

    def _make(self) -> None:
        try:
            from core.model.backbones import create_backbone

            backbone = create_backbone("efficientnet_lite0")
            if getattr(backbone, "runtime", "torch") == "onnxruntime":
                from core.model.onnx_backbone import session

                session(backbone, (256, 256))
            self._result.append(backbone)
        except BaseException as exc:  # noqa: BLE001 (raised again where the backbone is used)
            self._result.append(exc)

    def get(self) -> object:
        if self._thread.is_alive():
            self._thread.join()
        elif not self._result:
            self._make()
        out = self._result[0]
        if isinstance(out, BaseException):
            raise out
        return out


def add_rest(cohort_dir: Path, progress: Callable[[float, str], None], get_backbone: Callable[[], object],
             added: Callable[[], None]) -> None:
    """The rest of a progressive demo's slides, each with its features and the current model's prediction."""
    from core.cohort.cohort_file import load_cohort
    from core.demo.progressive import add_slides
    from core.model.features import extract_slide
    from core.model.infer import ensure_results, load_model
    from core.model.versions import default_version
    from core.review.store import open_store

    cohort = load_cohort(cohort_dir / "cohort.toml")
    version = default_version(cohort.models, cohort.results)
    loaded = load_model(cohort.models / version) if version else None
    backbone = get_backbone()

    def extract(slide: Path, out: Path, planned, p: Callable[[float, str], None]) -> None:
        extract_slide(slide, out, backbone, patch_size=cohort.patch_size, target_mpp=cohort.target_mpp,
                      min_tissue=cohort.min_tissue, mpp=planned.plan.mpp, default_mpp=cohort.default_mpp,
                      cache_dir=cohort.cache_dir, progress=p)

    def predict(image_id: str) -> None:
        if version:
            ensure_results(cohort, version, [image_id], loaded=loaded)

    def published(image_id: str) -> None:
        from core.cohort.labels import read_labels

        fresh = load_cohort(cohort_dir / "cohort.toml")  # the slide list and labels as they are now

        store = open_store(fresh.database)
        store.sync_slides(fresh, read_labels(fresh.labels) if fresh.labels else None)
        if version:
            import pandas as pd

            preds = fresh.results / version / "predictions.csv"
            if preds.is_file():
                store.record_predictions(version, pd.read_csv(preds))
        added()

    add_slides(cohort_dir, extract, predict, published, progress)
