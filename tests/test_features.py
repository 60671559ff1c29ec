"""Backbones (offline timm, local weights, packaged efficientnet_lite0), feature files, and extraction on a real slide."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from core.cli import main as cli_main
from core.errors import InputError, SlideError
from core.model.backbones import create_backbone, create_timm_model, embed, lite0_package_weights, map_lite0_keys
from core.model.feature_files import FeatureBag, read_features, write_features
from core.model.features import extract_cohort, extract_slide
from core.slides.slide import open_slide
from core.slides.tiling import patch_grid
from tests.conftest import SVS

# few patches: 224 px at 1 um/px on the 2220 x 2967 CMU region is a 4 x 6 grid
PATCH, MPP, FEW_MPP = 224, 1.0, 2.0


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # anything that tried to reach the hub would fail loudly instead of downloading
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return create_backbone("test_efficientnet", device="cpu")  # a real timm model, small enough for fast tests


@pytest.mark.parametrize("explicit", [False, True], ids=["packaged-default", "package-file-as-weights"])
def test_chelsea_is_classified_as_a_cat(explicit: bool) -> None:
    weights = lite0_package_weights() if explicit else None  # as --weights: keys are recognised and mapped too
    model, source = create_timm_model("efficientnet_lite0", weights=weights, num_classes=None)
    assert source is not None and "efficientnet_lite0" in source
    prep = create_backbone("efficientnet_lite0", weights=weights, device="cpu")  # the matching normalisation
    img = np.asarray(Image.fromarray(data.chelsea()).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    with torch.inference_mode():
        probs = model(prep.preprocess(torch.from_numpy(img.copy())[None])).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"chelsea classified as ImageNet class {top}"
    assert float(probs[281:286].sum()) > 0.8


def test_lite0_mapping_covers_every_timm_parameter() -> None:
    import timm

    state = map_lite0_keys(torch.load(lite0_package_weights(), map_location="cpu", weights_only=True))
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        own = timm.create_model(arch, pretrained=False).state_dict()
        assert set(state) == set(own)
        assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in own.items())


def test_default_backbone_features(lite0) -> None:
    assert lite0.dim == 1280 and lite0.weights is not None
    assert lite0.mean == (0.5, 0.5, 0.5)
    batch = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    out = embed(lite0, batch)
    assert out.shape == (3, 1280) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_timm_backbone_by_name_random_init() -> None:
    a = create_backbone("test_resnet", device="cpu")
    b = create_backbone("test_resnet", device="cpu")
    assert a.weights is None and a.mean == pytest.approx(a.module.pretrained_cfg["mean"])  # timm's own normalisation
    batch = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    fa, fb = embed(a, batch), embed(b, batch)
    assert fa.shape == (2, a.dim) and torch.isfinite(fa).all()
    assert not torch.allclose(fa, fb)  # two random inits, not the same pretrained weights


def test_vit_patches_are_resized_to_its_input_size() -> None:
    bb = create_backbone("test_vit", device="cpu")
    assert bb.fixed_input and bb.input_size == (160, 160)
    out = embed(bb, torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8))
    assert out.shape == (2, bb.dim)


def test_unknown_backbone_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="no_such_model"):
        create_backbone("no_such_model", device="cpu")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_round_trip(tmp_path: Path, suffix: str) -> None:
    src, _ = create_timm_model("test_efficientnet", num_classes=None)  # with its classifier: headless load drops it
    state = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:  # a DataParallel-style checkpoint: prefix and wrapper are stripped
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    bb = create_backbone("test_efficientnet", weights=path, device="cpu")
    assert bb.weights == str(path)
    batch = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    src.reset_classifier(0)
    with torch.inference_mode():
        expected = src.eval()(bb.preprocess(batch))
    torch.testing.assert_close(embed(bb, batch), expected, rtol=0, atol=0)


def test_mismatched_or_broken_weights_raise(tmp_path: Path) -> None:
    src, _ = create_timm_model("test_efficientnet", num_classes=0)
    path = tmp_path / "effnet.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(InputError, match=r"effnet\.pt: weights do not fit.*missing keys"):
        create_backbone("test_resnet", weights=path, device="cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(InputError, match="junk.safetensors: not a readable weights file"):
        create_backbone("test_efficientnet", weights=junk, device="cpu")
    with pytest.raises(InputError, match="not found"):
        create_backbone("test_efficientnet", weights=tmp_path / "missing.pt", device="cpu")


def test_extract_slide_on_real_svs(tmp_path: Path, lite0) -> None:
    out = tmp_path / "CMU-1-Small-Region.h5"
    seen: list[float] = []
    extract_slide(SVS, out, lite0, patch_size=PATCH, target_mpp=MPP, batch_size=8, num_workers=2,
                  progress=lambda f, m: seen.append(f))
    slide = open_slide(SVS)
    grid = patch_grid(slide, patch_size=PATCH, target_mpp=MPP)
    bag = read_features(out)
    assert 4 <= len(bag) <= 24
    np.testing.assert_array_equal(bag.coords, grid.coords)
    assert bag.features.shape == (len(grid), 1280) and np.isfinite(bag.features).all()
    assert bag.patch_size_level0 == grid.patch_size_level0
    assert bag.mpp == MPP and bag.backbone == "efficientnet_lite0"
    assert bag.attrs["patch_size"] == PATCH and bag.attrs["target_mpp"] == MPP
    assert seen[-1] == 1.0 and seen == sorted(seen)
    # rows follow coords: the workers' patches match patches read here, in order
    idx = [0, len(grid) // 2, len(grid) - 1]
    direct = torch.stack([torch.from_numpy(np.array(slide.read_region_mpp(tuple(map(int, grid.coords[i])),
                                                                         (PATCH, PATCH), MPP))) for i in idx])
    torch.testing.assert_close(torch.from_numpy(bag.features[idx]), embed(lite0, direct), rtol=1e-4, atol=1e-4)


def test_zero_tissue_slide_writes_an_empty_bag(tmp_path: Path, lite0) -> None:
    out = extract_slide(SVS, tmp_path / "empty.h5", lite0, patch_size=PATCH, target_mpp=FEW_MPP, min_tissue=1.01)
    bag = read_features(out)
    assert len(bag) == 0 and bag.features.shape == (0, 1280) and bag.coords.shape == (0, 2)


def test_extract_cohort_skips_done_redoes_partial_and_reports_bad(tmp_path: Path, tiny) -> None:
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    shutil.copy(SVS, slides_dir / "a.svs")
    shutil.copy(SVS, slides_dir / "b.svs")
    (slides_dir / "bad.svs").write_bytes(b"this is not a slide")
    slides = {p.stem: p for p in slides_dir.iterdir()}
    out = tmp_path / "features"
    kw = {"patch_size": PATCH, "target_mpp": FEW_MPP, "batch_size": 4, "num_workers": 1}
    first = extract_cohort(slides, out, tiny, **kw)
    assert sorted(first.written) == ["a", "b"] and list(first.failed) == ["bad"]
    assert "bad.svs" in first.failed["bad"] and "\n" not in first.failed["bad"]
    mtime_a = (out / "a.h5").stat().st_mtime_ns
    # a crash of a non-atomic writer: a truncated file at the final path, plus a stray temp file
    (out / "b.h5").write_bytes((out / "b.h5").read_bytes()[:2000])
    (out / ".c.abc123.h5.tmp").write_bytes(b"half")
    second = extract_cohort(slides, out, tiny, **kw)
    assert second.skipped == ["a"] and second.written == ["b"] and list(second.failed) == ["bad"]
    assert (out / "a.h5").stat().st_mtime_ns == mtime_a
    assert len(read_features(out / "b.h5")) == len(read_features(out / "a.h5")) > 0
    # features from another backbone are never mixed in silently
    third = extract_cohort({"a": slides["a"]}, out, create_backbone("test_resnet", device="cpu"), **kw)
    assert "holds test_efficientnet features" in third.failed["a"]


def test_interrupted_extraction_leaves_no_file(tmp_path: Path, tiny) -> None:
    def boom(frac: float, msg: str) -> None:
        if frac < 1.0:
            raise KeyboardInterrupt

    out = tmp_path / "x.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_slide(SVS, out, tiny, patch_size=PATCH, target_mpp=FEW_MPP, batch_size=2, num_workers=0,
                      progress=boom)
    assert not out.exists()
    bag = FeatureBag(np.ones((2, 3), np.float32), np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError):  # fails mid-write, after the datasets were created
        write_features(out, bag, {"bad": object()})
    assert not out.exists() and os.listdir(tmp_path) == []


def test_read_clam_style_file(tmp_path: Path) -> None:
    path = tmp_path / "clam_slide.h5"
    feats = np.random.default_rng(0).random((5, 1, 1024)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=np.arange(10, dtype=np.float64).reshape(5, 2) * 256.0)
        c.attrs["patch_size"] = 256
        c.attrs["patch_level"] = 0
    bag = read_features(path)
    assert bag.features.shape == (5, 1024) and bag.features.dtype == np.float32
    np.testing.assert_array_equal(bag.features, feats[:, 0])
    assert bag.coords.dtype == np.int64 and bag.coords[1].tolist() == [512, 768]
    assert bag.patch_size_level0 == 256 and bag.backbone is None and bag.image_id == "clam_slide"


def test_read_trident_style_file(tmp_path: Path) -> None:
    path = tmp_path / "trident_slide.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("features", data=np.ones((3, 768), np.float16))
        d.attrs["encoder"] = "conch_v15"
        c = f.create_dataset("coords", data=np.array([[0, 0], [512, 0], [0, 512]], np.int32))
        c.attrs.update({"patch_size": 256, "patch_size_level0": 512, "target_magnification": 20, "overlap": 0})
    bag = read_features(path)
    assert bag.features.shape == (3, 768) and bag.features.dtype == np.float32
    assert bag.patch_size_level0 == 512 and bag.mpp == pytest.approx(0.5) and bag.backbone == "conch_v15"


def test_write_read_round_trip(tmp_path: Path) -> None:
    bag = FeatureBag(np.random.default_rng(1).random((4, 6)).astype(np.float32),
                     np.array([[0, 0], [1, 2], [3, 4], [5, 6]]), 448, 0.5, "resnet18")
    got = read_features(write_features(tmp_path / "s.h5", bag))
    np.testing.assert_array_equal(got.features, bag.features)
    np.testing.assert_array_equal(got.coords, bag.coords)
    assert (got.patch_size_level0, got.mpp, got.backbone) == (448, 0.5, "resnet18")


def test_bad_feature_files_raise_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.h5: features file not found"):
        read_features(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"garbage")
    with pytest.raises(InputError, match="junk.h5: not a readable HDF5"):
        read_features(junk)
    nocoords = tmp_path / "nocoords.h5"
    with h5py.File(nocoords, "w") as f:
        f["features"] = np.zeros((2, 4), np.float32)
    with pytest.raises(InputError, match="nocoords.h5: no 'coords'"):
        read_features(nocoords)
    mismatch = tmp_path / "mismatch.h5"
    with h5py.File(mismatch, "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
    with pytest.raises(InputError, match="mismatch.h5: 3 feature rows but 2 coords"):
        read_features(mismatch)


def test_extract_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    shutil.copy(SVS, slides_dir / "good.svs")
    (slides_dir / "broken.svs").write_bytes(b"nope")
    out = tmp_path / "feats"
    argv = ["extract", "--slides", str(slides_dir), "--out", str(out), "--patch", str(PATCH), "--mpp", str(FEW_MPP),
            "--batch-size", "4", "--workers", "1", "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "extracted 1, already done 0, failed 1" in err and "broken.svs" in err
    assert read_features(out / "good.h5").backbone == "efficientnet_lite0"
    assert cli_main(argv) == 2
    assert "extracted 0, already done 1, failed 1" in capsys.readouterr().err
    with pytest.raises(SlideError):  # the library call itself raises; only the CLI turns it into exit code 2
        extract_slide(slides_dir / "broken.svs", out / "broken.h5", create_backbone("test_efficientnet", device="cpu"))


def test_bench_extract_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "bench.json"
    argv = ["bench", "extract", "--slide", str(SVS), "--backbone", "test_efficientnet", "--patch", "64", "--mpp", "4",
            "--patches", "8", "--batch-size", "4", "--workers", "1", "--repeat", "1", "--device", "cpu",
            "--json", str(out)]
    assert cli_main(argv) == 0
    capsys.readouterr()
    res = json.loads(out.read_text())
    assert res["model_only_patches_per_s"] > 0 and res["end_to_end_patches_per_s"] > 0
    # the JSON rounds patches/s to 2 decimals and the ratio to 3: compare within that rounding
    recomputed = res["end_to_end_patches_per_s"] / res["model_only_patches_per_s"]
    assert res["ratio"] == pytest.approx(recomputed, rel=0.02, abs=0.002)
    assert res["full_extract_slide"]["patches"] > 0 and res["patches_per_pass"] == 8


def test_extract_cli_with_cohort_uses_its_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "slides").mkdir()
    shutil.copy(SVS, tmp_path / "slides" / "a.svs")
    shutil.copy(SVS, tmp_path / "slides" / "b.svs")
    (tmp_path / "cohort.toml").write_text(
        'name = "t"\nslides = "slides"\nfeatures = "feats"\n'
        f"[patches]\npatch_size = {PATCH}\ntarget_mpp = {FEW_MPP}\nmin_tissue = 0.0\n[mpp]\na = 0.25\n")
    assert cli_main(["extract", "--cohort", str(tmp_path / "cohort.toml"), "--workers", "0", "--device", "cpu",
                    "--backbone", "test_efficientnet"]) == 0
    assert "extracted 2" in capsys.readouterr().err
    a, b = read_features(tmp_path / "feats" / "a.h5"), read_features(tmp_path / "feats" / "b.h5")
    assert a.attrs["patch_size"] == PATCH and a.mpp == FEW_MPP
    assert a.patch_size_level0 == round(PATCH * FEW_MPP / 0.25)  # the cohort's per-slide mpp override
    assert b.patch_size_level0 == round(PATCH * FEW_MPP / open_slide(SVS).mpp)
    assert len(a) < len(b)


def test_extract_plain_png_with_default_mpp(tmp_path: Path, tiny) -> None:
    from tests.conftest import synthetic_tissue

    png = tmp_path / "plain.png"
    Image.fromarray(synthetic_tissue(1400, 1000, seed=3)).save(png)
    cache = tmp_path / "cache"
    with pytest.raises(SlideError, match="no mpp"):
        extract_slide(png, tmp_path / "x.h5", tiny, patch_size=PATCH, target_mpp=MPP, cache_dir=cache)
    out = extract_slide(png, tmp_path / "plain.h5", tiny, patch_size=PATCH, target_mpp=MPP, default_mpp=0.5,
                        batch_size=4, num_workers=2, cache_dir=cache)
    grid = patch_grid(open_slide(png, cache_dir=cache), patch_size=PATCH, target_mpp=MPP, default_mpp=0.5)
    bag = read_features(out)
    assert len(bag) == len(grid) > 0 and bag.patch_size_level0 == 448
    np.testing.assert_array_equal(bag.coords, grid.coords)
    assert not (tmp_path / "x.h5").exists()
