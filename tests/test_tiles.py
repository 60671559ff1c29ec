"""Tile routes through Starlette's TestClient: descriptors, tile sizes, overlays, and every kind of bad request."""

from __future__ import annotations

import io
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from core.cohort.cohort_file import load_cohort
from core.slides.slide import open_slide
from core.viewer import overlay, tiles

sys.path.insert(0, str(Path(__file__).parent))
from _viewer_data import PATCH, build_cohort, grid_coords  # noqa: E402

VERSION = "v001-abmil"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    c = load_cohort(build_cohort(root, VERSION))
    tiles.unregister_all()
    tiles.register_cohort(c)
    yield c
    tiles.unregister_all()


@pytest.fixture(scope="module")
def client(cohort):
    return TestClient(Starlette(routes=tiles.tile_routes()))


def test_dzi_descriptor_matches_the_slide(client, cohort):
    r = client.get("/tiles/synth_odd.dzi")
    assert r.status_code == 200 and "max-age" in r.headers["cache-control"]
    root = ET.fromstring(r.text)
    assert root.get("TileSize") == "254" and root.get("Overlap") == "1" and root.get("Format") == "jpeg"
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (size.get("Width"), size.get("Height")) == ("1001", "757")


@pytest.mark.parametrize("image_id", ["synth_odd", "CMU-1-Small-Region"])
def test_tile_sizes_per_level_including_edge_tiles(client, cohort, image_id):
    slide = open_slide(cohort.slide_paths[image_id])
    dz = slide.deepzoom()
    levels = range(dz.level_count) if image_id == "synth_odd" else (0, 5, 9, dz.level_count - 2, dz.level_count - 1)
    for level in levels:
        cols, rows = dz.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, 0), (0, rows - 1), (cols - 1, rows - 1)}:
            r = client.get(f"/tiles/{image_id}_files/{level}/{col}_{row}.jpeg")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/jpeg" and "max-age" in r.headers["cache-control"]
            assert Image.open(io.BytesIO(r.content)).size == dz.get_tile_dimensions(level, (col, row))


def test_overlay_tiles_match_slide_tiles_and_carry_values(client, cohort):
    slide = open_slide(cohort.slide_paths["synth_a"])
    dz = slide.deepzoom()
    top = dz.level_count - 1
    for level in (top, top - 1, 2):
        cols, rows = dz.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1)}:
            r = client.get(f"/tiles/attention/{VERSION}/synth_a_files/{level}/{col}_{row}.png?cls=1&cmap=viridis")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png" and "max-age" in r.headers["cache-control"]
            img = Image.open(io.BytesIO(r.content))
            assert img.mode == "RGBA" and img.size == dz.get_tile_dimensions(level, (col, row))
    # the pixel under a patch centre at full resolution has the colour of that patch's rescaled value
    layer = tiles.load_attention_layer(cohort, VERSION, "synth_a", slide.dimensions)
    scaled = overlay.rescale(layer.values[:, 1], "rank")
    lut = overlay.colormap_lut("viridis")
    img = np.asarray(Image.open(io.BytesIO(client.get(
        f"/tiles/attention/{VERSION}/synth_a_files/{top}/1_0.png?cls=1&cmap=viridis&scale=rank&top=1&fade=0"
    ).content)))
    coords = grid_coords(1000, 700)
    np.testing.assert_array_equal(layer.coords, coords)
    for i, (x, y) in enumerate(coords):
        cx, cy = x + PATCH // 2 - 253, y + PATCH // 2  # tile (1, 0) starts at DZ x = 254 - 1 overlap
        if 0 <= cx < img.shape[1] and cy < img.shape[0]:
            assert tuple(img[cy, cx]) == (*lut[round(float(scaled[i]) * 255)], 255)


def test_default_style_shows_the_top_fifth_by_rank_fading_with_attention(client, cohort):
    """The default overlay: top 20% of patches by rank, opacity proportional to the rank (issue 12)."""
    layer = tiles.load_attention_layer(cohort, VERSION, "synth_a", (1000, 700))
    top = overlay.dz_level_count((1000, 700)) - 1
    img = np.asarray(Image.open(io.BytesIO(client.get(
        f"/tiles/attention/{VERSION}/synth_a_files/{top}/0_0.png").content)))
    scaled = overlay.rescale(layer.values[:, 0], "rank")
    shown = overlay.top_fraction_mask(layer.values[:, 0], 0.2)
    lut = overlay.colormap_lut("inferno")
    seen = 0
    for i, (x, y) in enumerate(layer.coords):
        cx, cy = x + PATCH // 2, y + PATCH // 2
        if cx < img.shape[1] and cy < img.shape[0]:
            want = (*lut[round(float(scaled[i]) * 255)], round(float(scaled[i]) * 255)) if shown[i] else (0, 0, 0, 0)
            assert tuple(img[cy, cx]) == want
            seen += 1
    assert seen > 10 and tiles.OverlayStyle.from_query({}) == tiles.OverlayStyle(0, "inferno", "rank", 0.2, True)


def test_smooth_rendering_is_served(client):
    url = f"/tiles/attention/{VERSION}/synth_a_files/10/0_0.png?top=1&fade=0&render="
    blocks = np.asarray(Image.open(io.BytesIO(client.get(url + "blocks").content)))
    smooth = np.asarray(Image.open(io.BytesIO(client.get(url + "smooth").content)))
    assert blocks.shape == smooth.shape and smooth.shape[2] == 4 and (smooth[..., 3] > 0).sum() > 0
    assert not np.array_equal(blocks, smooth)


def test_threshold_hides_all_but_the_top_patches(client):
    url = f"/tiles/attention/{VERSION}/synth_a_files/10/0_0.png?scale=rank&top="
    full = np.asarray(Image.open(io.BytesIO(client.get(url + "1").content)))
    few = np.asarray(Image.open(io.BytesIO(client.get(url + "0.1").content)))
    n_full, n_few = (full[..., 3] > 0).sum(), (few[..., 3] > 0).sum()
    assert n_full > 0 and 0 < n_few < 0.2 * n_full


def test_attention_at_returns_the_raw_values(client, cohort):
    layer = tiles.load_attention_layer(cohort, VERSION, "synth_a", (1000, 700))
    r = client.get(f"/tiles/attention/{VERSION}/synth_a/at.json?x=100&y=70")
    body = r.json()
    assert r.status_code == 200 and body["x"] == 64 and body["y"] == 64 and body["size"] == PATCH
    i = body["index"]
    assert body["raw"] == pytest.approx(layer.values[i].tolist()) and body["classes"] == ["benign", "tumor"]
    assert client.get(f"/tiles/attention/{VERSION}/synth_a/at.json?x=995&y=5").json() == {"index": None}
    assert client.get(f"/tiles/attention/{VERSION}/synth_a/at.json?x=a&y=1").status_code == 400


@pytest.mark.parametrize("url, status", [
    ("/tiles/nope.dzi", 404),
    ("/tiles/nope_files/0/0_0.jpeg", 404),
    ("/tiles/synth_a_files/99/0_0.jpeg", 404),
    ("/tiles/synth_a_files/10/9_0.jpeg", 404),
    ("/tiles/synth_a_files/10/0_9.jpeg", 404),
    ("/tiles/synth_a_files/-1/0_0.jpeg", 404),
    ("/tiles/synth_a_files/10/0_0.png", 404),
    ("/tiles/%2e%2e%2fetc%2fpasswd.dzi", 400),
    ("/tiles/..%2F..%2Fetc%2Fpasswd_files/0/0_0.jpeg", 400),
    ("/tiles/%2e%2e/%2e%2e/etc/passwd", 400),
    ("/tiles/synth_a.dzi?cohort=other", 404),
    (f"/tiles/attention/{VERSION}/nope_files/0/0_0.png", 404),
    ("/tiles/attention/v999/synth_a_files/0/0_0.png", 404),
    (f"/tiles/attention/{VERSION}/CMU-1-Small-Region_files/0/0_0.png", 404),
    ("/tiles/attention/..%2F..%2Fslides/synth_a_files/0/0_0.png", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/99/0_0.png", 404),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?cmap=nope", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?top=0", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?cls=7", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?scale=log", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?render=3d", 400),
    (f"/tiles/attention/{VERSION}/synth_a_files/0/0_0.png?fade=maybe", 400),
    ("/tiles/_static/osd/../../../package.json", 404),  # the client resolves the dots: /package.json
    ("/tiles/_static/osd/%2e%2e/%2e%2e/package.json", 400),
    ("/tiles/_static/osd/nothing.js", 404),
    ("/tiles/elsewhere/x", 404),
])
def test_bad_requests_get_a_short_4xx(client, url, status):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text)
    assert len(r.text) < 200 and "Traceback" not in r.text and "root:" not in r.text


def test_only_registered_cohorts_are_served(client, cohort, tmp_path):
    other = load_cohort(build_cohort(tmp_path / "other", VERSION, with_svs=False))
    object.__setattr__(other, "name", "second")
    tiles.register_cohort(other)
    assert client.get("/tiles/synth_a.dzi?cohort=second").status_code == 200
    assert client.get("/tiles/synth_a.dzi?cohort=viewertest").status_code == 200
    tiles.unregister_all()
    assert client.get("/tiles/synth_a.dzi").status_code == 404
    tiles.register_cohort(cohort)
    assert client.get("/tiles/synth_a.dzi").status_code == 200


def test_a_broken_slide_is_a_one_line_error(client, cohort, tmp_path):
    bad = tmp_path / "broken" / "slides"
    bad.mkdir(parents=True)
    (bad / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    (tmp_path / "broken" / "cohort.toml").write_text('name = "broken"\nslides = "slides"\n')
    tiles.register_cohort(load_cohort(tmp_path / "broken" / "cohort.toml"))
    try:
        r = client.get("/tiles/broken.dzi")
        assert r.status_code == 500 and "broken.svs" in r.text and "\n" not in r.text.strip()
        assert client.get("/tiles/synth_a.dzi").status_code == 200  # the rest keeps working
    finally:
        tiles.unregister_all()
        tiles.register_cohort(cohort)


def test_openseadragon_is_served_same_origin(client):
    r = client.get("/tiles/_static/osd/openseadragon.min.js")
    assert r.status_code == 200 and "OpenSeadragon" in r.text[:2000]
    assert client.get("/tiles/_static/osd/images/zoomin_rest.png").headers["content-type"] == "image/png"


def test_plain_image_pyramids_live_in_the_cohorts_cache(tmp_path) -> None:
    from PIL import Image

    from core.cohort.cohort_file import cohort_from_dict
    from core.viewer.tiles import open_cohort_slide

    (tmp_path / "slides").mkdir()
    Image.new("RGB", (700, 500), (230, 150, 190)).save(tmp_path / "slides" / "core_7.png")
    cohort = cohort_from_dict({"slides": "slides", "default_mpp": 0.25}, tmp_path)
    slide = open_cohort_slide(cohort, "core_7")
    assert slide.dimensions == (700, 500)
    assert len(list((tmp_path / ".cache" / "pyramids").glob("core_7-*.tiff"))) == 1
