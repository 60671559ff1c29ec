"""extract --ray on a real local Ray cluster: a head and a second worker node, started by the test on 127.0.0.1.

The cluster runs inside network and PID namespaces the test makes (``unshare``, as root, as in CI): Ray binds the
namespace's loopback only, and every process it started dies with the namespace, whatever happens to the test.
One script (tests/ray_cluster.sh) starts the cluster once and runs two extractions: six slides and a corrupt one
(compared with the local path), and a run during which the worker node's raylet is killed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.model.feature_files import read_features
from core.model.features import extract_cohort
from tests.conftest import synthetic_tissue, write_pyramid_tiff

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARGS = "--backbone test_efficientnet --mpp 1.0 --patch 128 --batch-size 4 --device cpu"
N_SLIDES = 6


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                           timeout=30)
    return probe.returncode == 0


if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install -r requirements.txt)", allow_module_level=True)
if not _namespaces_work():
    pytest.skip("needs root and unshare (network + PID namespaces) to run a private Ray cluster",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run tests/ray_cluster.sh once; return its folder, the inputs and the local path's features."""
    import torch
    from safetensors.torch import save_file

    from core.model.backbones import create_backbone, create_timm_model

    data = tmp_path_factory.mktemp("ray_data")
    good, slides = data / "good", data / "slides"
    good.mkdir()
    slides.mkdir()
    for i in range(N_SLIDES):
        write_pyramid_tiff(good / f"s{i}.tiff", synthetic_tissue(1100 + 37 * i, 900, seed=i), mpp=0.5)
        shutil.copy(good / f"s{i}.tiff", slides / f"s{i}.tiff")
    (slides / "broken.tiff").write_bytes((good / "s2.tiff").read_bytes()[:3000])  # a slide cut short
    torch.manual_seed(0)
    model, _ = create_timm_model("test_efficientnet", None)
    weights = data / "tiny.safetensors"  # fixed weights: every process builds the same backbone
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    local = data / "local"
    report = extract_cohort({p.stem: p for p in slides.iterdir()}, local,
                            create_backbone("test_efficientnet", weights, "cpu"), patch_size=128, target_mpp=1.0,
                            batch_size=4, num_workers=0)
    assert len(report.written) == N_SLIDES and list(report.failed) == ["broken"]

    work = Path(tempfile.mkdtemp(prefix="slr", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "REPO": str(REPO), "W": str(work), "SLIDES": str(slides), "GOOD": str(good),
           "ARGS": f"{ARGS} --weights {weights}", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "bash",
           str(REPO / "tests" / "ray_cluster.sh")]
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:  # --kill-child: the namespace and all it started die with unshare
        proc = None
    yield {"work": work, "local": local, "proc": proc, "local_failed": report.failed["broken"]}
    shutil.rmtree(work, ignore_errors=True)


def _log(run: dict, name: str) -> str:
    path = run["work"] / f"{name}.log"
    return path.read_text(errors="replace") if path.is_file() else f"(no {name}.log)"


def _rc(run: dict, name: str) -> int | None:
    path = run["work"] / f"{name}.rc"
    return int(path.read_text()) if path.is_file() else None


def _started(run: dict) -> None:
    err = run["work"] / "error"
    assert not err.is_file(), f"{err.read_text()}: {_log(run, 'head')[-2000:]} {_log(run, 'worker')[-2000:]}"
    assert run["proc"] is not None, "the cluster script ran past its time limit"


def test_features_through_the_cluster_equal_the_local_path(cluster_run: dict) -> None:
    _started(cluster_run)
    log = _log(cluster_run, "equal")
    assert "2 node(s)" in log  # really spread over the head and the worker node
    assert f"extracted {N_SLIDES}, already done 0, failed 1" in log, log[-3000:]
    for i in range(N_SLIDES):
        ours = read_features(cluster_run["work"] / "ray" / f"s{i}.h5")
        ref = read_features(cluster_run["local"] / f"s{i}.h5")
        assert len(ours) > 0 and np.array_equal(ours.coords, ref.coords)
        np.testing.assert_allclose(ours.features, ref.features, rtol=1e-4, atol=1e-5)
        assert ours.backbone == ref.backbone and ours.patch_size_level0 == ref.patch_size_level0
        assert ours.attrs["weights"] == ref.attrs["weights"]
    assert f"done s0: {len(read_features(cluster_run['local'] / 's0.h5'))} patches in" in log  # per-slide rate


def test_a_corrupt_slide_is_reported_by_name_and_the_others_finish(cluster_run: dict) -> None:
    _started(cluster_run)
    log = _log(cluster_run, "equal")
    assert _rc(cluster_run, "equal") == 2, log[-3000:]  # non-zero: a slide failed
    errors = [line for line in log.splitlines() if line.startswith("error: broken:")]
    assert len(errors) == 2 and all("broken.tiff" in line for line in errors)  # once as it fails, once in the summary
    assert errors[0] == f"error: broken: {cluster_run['local_failed']}"  # the local path's reason, not a retry
    assert "retry" not in log  # a corrupt file is not the cluster's fault: never retried
    assert sorted(p.name for p in (cluster_run["work"] / "ray").iterdir()) == [f"s{i}.h5" for i in range(N_SLIDES)]


def test_killing_the_worker_raylet_mid_run_retries_and_leaves_one_valid_file_per_slide(cluster_run: dict) -> None:
    _started(cluster_run)
    log = _log(cluster_run, "kill")
    assert (cluster_run["work"] / "killed").is_file(), f"the run ended before the kill: {log[-2000:]}"
    assert _rc(cluster_run, "kill") == 0, log[-3000:]
    out = cluster_run["work"] / "kill"
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"s{i}.h5" for i in range(N_SLIDES)]  # exactly one file per slide, no .part/.tmp left
    for name in files:  # each complete and right, though some batches were computed twice on different nodes
        bag, ref = read_features(out / name), read_features(cluster_run["local"] / name)
        assert np.array_equal(bag.coords, ref.coords)
        np.testing.assert_allclose(bag.features, ref.features, rtol=1e-4, atol=1e-5)
    assert f"extracted {N_SLIDES}, already done 0, failed 0" in log
    retries = log.count("resubmitted elsewhere")
    assert f"retried {retries} time(s) after worker failures" in log  # every retry counted in the summary
    if retries == 0:  # the files are right; only the retry path went unexercised this time
        pytest.skip("the worker node had no batch in flight when its raylet was killed (timing)")


def test_the_cluster_is_always_shut_down(cluster_run: dict) -> None:
    _started(cluster_run)
    assert (cluster_run["work"] / "stopped").is_file()  # the script's trap ran `ray stop`
    assert cluster_run["proc"].returncode == 0, cluster_run["proc"].stderr[-2000:]
    left = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert str(cluster_run["work"]) not in left  # no raylet, GCS or worker of ours survives the namespace
