"""The viewer's first open of an image that is not converted yet: a progress bar while its pyramid is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.viewer import tiles

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "viewer.py")


def test_first_view_converts_with_progress_then_reuses(tmp_path: Path, monkeypatch) -> None:
    import core.cohort.convert

    (tmp_path / "slides").mkdir()
    Image.fromarray(np.full((900, 1200, 3), (200, 120, 160), np.uint8)).save(tmp_path / "slides" / "core_1.png")
    (tmp_path / "cohort.toml").write_text('name = "vc"\nslides = "slides"\n')
    monkeypatch.setenv("SLIDELENS_COHORT", str(tmp_path / "cohort.toml"))
    seen: list[float] = []
    real = core.cohort.convert.ensure_slide

    def spy(path, cache_dir, mpp=None, progress=None):  # noqa: ANN001, ANN202
        return real(path, cache_dir, mpp, lambda f, m: (seen.append(f), progress(f, m)))

    monkeypatch.setattr(core.cohort.convert, "ensure_slide", spy)
    tiles.unregister_all()
    try:
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        assert not at.exception and not at.error
        assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 2  # the bar moved while converting
        assert len(list((tmp_path / ".cache" / "pyramids").glob("core_1-*.tiff"))) == 1
        seen.clear()
        at.run()
        assert seen == [] and not at.exception  # converted once: the next view opens it at once
    finally:
        tiles.unregister_all()
