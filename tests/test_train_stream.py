"""Training streams bags from the features files through a bounded cache: the same model as with every bag in
memory, float16 feature files, header-only reads, and a cache that never holds more than its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_train_infer import write_cohort

from core.errors import InputError
from core.model.feature_files import FeatureBag, read_feature_info, read_features, write_features
from core.model.train import train_model
from core.model.train_data import Bag, bag_cache, input_stats, load_bags, set_bag_cache


@pytest.fixture(autouse=True)
def _restore_cache():
    yield
    set_bag_cache(1 << 30)


def _train(root: Path, out: str, model: str, cache_bytes: int) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    set_bag_cache(cache_bytes)
    d = train_model(root / "features", root / "labels.csv", model=model, out_dir=root / out, folds=2, epochs=3,
                    seed=7)
    assert bag_cache().nbytes <= cache_bytes
    return load_file(str(d / "weights.safetensors")), pd.read_csv(d / "oof_predictions.csv")


@pytest.mark.parametrize("model", ["abmil", "transmil"])
def test_streamed_training_gives_the_in_memory_model(tmp_path: Path, model: str) -> None:
    write_cohort(tmp_path, per_class=4)
    one_bag = 60 * 16 * 4  # the biggest toy bag: 60 patches x 16 dims float32
    w_mem, oof_mem = _train(tmp_path, "mem", model, 1 << 30)  # every bag stays in memory
    w_str, oof_str = _train(tmp_path, "stream", model, one_bag)  # at most one bag cached: the rest re-read
    assert bag_cache().misses > len(oof_str)  # the small cache really re-read bags from the files
    assert w_mem.keys() == w_str.keys()
    for k in w_mem:
        torch.testing.assert_close(w_str[k], w_mem[k], rtol=0, atol=0, msg=k)
    pd.testing.assert_frame_equal(oof_str, oof_mem)


def test_input_stats_match_the_concatenated_patches(tmp_path: Path) -> None:
    write_cohort(tmp_path, per_class=3)
    bags, _ = load_bags(tmp_path / "features", [p.stem for p in sorted((tmp_path / "features").glob("*.h5"))])
    x = torch.cat([read_features_tensor(b) for b in bags]).double()
    mean, std = input_stats(bags)
    torch.testing.assert_close(mean, x.mean(0).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, x.std(0).float(), rtol=1e-6, atol=1e-6)


def read_features_tensor(b: Bag) -> torch.Tensor:
    return torch.from_numpy(read_features(b.path).features)


def test_float16_features_round_trip_and_train(tmp_path: Path) -> None:
    labels = write_cohort(tmp_path, per_class=4)
    half = tmp_path / "half"
    for image_id in labels:
        bag = read_features(tmp_path / "features" / f"{image_id}.h5")
        write_features(half / "features" / f"{image_id}.h5", bag, dtype="float16")
        back = read_features(half / "features" / f"{image_id}.h5")
        assert back.features.dtype == np.float32  # read back as float32
        np.testing.assert_allclose(back.features, bag.features, rtol=1e-3, atol=1e-3)
        assert read_feature_info(half / "features" / f"{image_id}.h5").dtype == "float16"
    assert (half / "features" / "A0.h5").stat().st_size < (tmp_path / "features" / "A0.h5").stat().st_size
    (half / "labels.csv").write_text((tmp_path / "labels.csv").read_text())
    d = train_model(half / "features", half / "labels.csv", model="abmil", folds=2, epochs=3, seed=0)
    assert (d / "oof_predictions.csv").is_file()
    with pytest.raises(InputError, match="float16 range"):
        write_features(tmp_path / "big.h5", FeatureBag(np.full((2, 3), 1e6, np.float32), np.zeros((2, 2))),
                       dtype="float16")


def test_header_reads_decode_no_rows_and_truncated_files_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32)
    path = write_features(tmp_path / "s.h5", FeatureBag(x, np.zeros((500, 2), np.int64), 256, 0.5, "toy"))
    info = read_feature_info(path)
    assert (info.n, info.dim, info.dtype, info.backbone, info.patch_size_level0) == (500, 64, "float32", "toy", 256)
    bags, missing = load_bags(tmp_path, ["s", "nothere"])
    assert missing == ["nothere"] and bags[0].n == 500 and bags[0].dim == 64
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 40_000])  # the rows are cut short
    with pytest.raises(InputError, match="cut.h5"):
        read_feature_info(cut, verify=True)  # the resume check refuses the file (HDF5 knows its own length)


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(write_features(tmp_path / f"b{i}.h5",
                                    FeatureBag(np.full((10, 4), i, np.float32), np.zeros((10, 2)))))
    cache = set_bag_cache(2 * 10 * 4 * 4)  # room for two bags
    for p in paths[:2]:
        cache.get(p)
    cache.get(paths[0])  # b0 is now the most recent
    cache.get(paths[2])  # evicts b1
    misses = cache.misses
    assert float(cache.get(paths[0])[0, 0]) == 0 and cache.misses == misses
    assert float(cache.get(paths[1])[0, 0]) == 1 and cache.misses == misses + 1
    assert cache.nbytes <= cache.max_bytes
