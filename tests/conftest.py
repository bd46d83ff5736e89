"""Shared fixtures. The expensive ones (a synthetic dataset, a random-weight tiny model and its exports, a model
trained 150 iterations) are built once per test run and shared by the pytest-xdist workers: the first worker to
need one builds it under a file lock, the others read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

# Bounded CPU use: the cores shared among pytest-xdist's workers (scripts/test.sh runs -n 2 on the 2-core CI
# machine: one thread each), at most 2 threads for a serial run.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


# fixtures that train or export a model (a minute or more on 2 cores): a test that uses one is `slow`, off the fast
# path of CONTRIBUTING.md (pytest -m "not slow"), as are the tests marked so themselves (R-50 models, compiling, DDP)
SLOW_FIXTURES = {"trained", "tiny_onnx", "tiny_fp16", "r50_photo"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared(tmp_path_factory, worker_id):
    """`shared(name, build)`: the folder `name`, filled once by `build(folder)` for all workers of this run."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    root = root / "shared"
    root.mkdir(exist_ok=True)

    def get(name: str, build) -> Path:
        folder = root / name
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".done").exists():
                folder.mkdir(exist_ok=True)
                build(folder)
                (folder / ".done").touch()
        return folder

    return get


@pytest.fixture(scope="session")
def synth_data(shared) -> Path:
    from mrcnn.data.synth import generate_synthetic

    return shared("synth", lambda d: generate_synthetic(d / "data", n_train=12, n_val=4, size=128, seed=3)) / "data"


TINY_NAMES = ["square", "circle", "triangle", "star", "ellipse"]  # the synthetic set's classes, in another order


@pytest.fixture(scope="session")
def tiny(shared):
    """shapes-tiny with random weights: checkpoint, the same model in PyTorch (score threshold 0), class names."""
    from mrcnn.config import Config, get_config
    from mrcnn.model import build_model
    from mrcnn.model.checkpoint import load_checkpoint, save_checkpoint

    def build(folder: Path) -> None:
        torch.manual_seed(0)
        cfg = get_config("shapes-tiny")
        model = build_model(cfg.model)
        save_checkpoint(
            folder / "tiny.pt", {"config": cfg.to_dict(), "class_names": TINY_NAMES, "model": model.state_dict()}
        )

    ckpt = shared("tiny", build) / "tiny.pt"
    saved = load_checkpoint(ckpt)
    cfg0 = Config.from_dict(saved["config"]).override(["model.box_score_thresh=0.0"])
    ours = build_model(cfg0.model)
    ours.load_state_dict(saved["model"])
    return {"ckpt": ckpt, "cfg": cfg0, "model": ours.eval(), "names": TINY_NAMES}


def _exports(shared, tiny, name: str, targets, fp16: bool) -> dict[str, Path]:
    import time

    from mrcnn.export import export_checkpoint

    suffix = "-fp16" if fp16 else ""

    def build(folder: Path) -> None:
        for flavour in targets:
            t0 = time.perf_counter()
            export_checkpoint(
                tiny["ckpt"],
                folder / f"tiny-{flavour}{suffix}.onnx",
                flavour=flavour,
                fp16=fp16,
                overrides=["model.box_score_thresh=0.0"],
                log=lambda m: None,
            )
            print(f"export {flavour}{suffix}: {time.perf_counter() - t0:.1f} s")

    folder = shared(name, build)
    return {flavour: folder / f"tiny-{flavour}{suffix}.onnx" for flavour in targets}


@pytest.fixture(scope="session")
def tiny_onnx(shared, tiny):
    """Every flavour of the tiny model, dynamic batch and size, score threshold 0."""
    pytest.importorskip("onnxscript")
    from helpers import FLAVOURS

    return _exports(shared, tiny, "tiny-onnx", FLAVOURS, fp16=False)


@pytest.fixture(scope="session")
def tiny_fp16(shared, tiny):
    """The tiny model exported with --fp16, trt and rtx flavours (portable has the same float16 network between
    float32 ops whose portable forms are checked in float32)."""
    pytest.importorskip("onnxscript")
    from helpers import FP16_FLAVOURS

    return _exports(shared, tiny, "tiny-fp16", FP16_FLAVOURS, fp16=True)


@pytest.fixture(scope="session")
def trained(shared, synth_data):
    """A shapes-tiny model trained 150 iterations on the 12 synthetic images (128 px), and its trt-flavour ONNX."""
    pytest.importorskip("onnxscript")
    from helpers import tiny_config

    from mrcnn.export import export_checkpoint
    from mrcnn.training.trainer import train

    def build(out: Path) -> None:
        res = train(
            tiny_config(max_iter=150, warmup_iters=10),
            synth_data,
            out / "run",
            log=lambda m: None,
            progress=False,
            evaluate_at_end=False,
            device="cpu",
        )
        export_checkpoint(res.checkpoint, out / "model-trt.onnx", flavour="trt", log=lambda m: None)

    out = shared("trained", build)
    return {"ckpt": out / "run" / "model_final.pt", "onnx": out / "model-trt.onnx", "dir": out}


@pytest.fixture(scope="session")
def r50_photo(shared) -> Path:
    """torchvision's maskrcnn_resnet50_fpn at its defaults (800/1333, score 0.05, 100 detections), tamed random
    weights (seed 1: about 100 detections on most photographs), converted by `mrcnn convert torchvision`: the
    checkpoint of the real-photograph tests."""
    from helpers import tame
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.model.convert import convert_torchvision

    def build(folder: Path) -> None:
        torch.manual_seed(1)
        tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        tame(tv)
        torch.save({"model": tv.state_dict()}, folder / "tv.pth")
        convert_torchvision(str(folder / "tv.pth"), str(folder / "r50.pt"))

    return shared("r50-photo", build) / "r50.pt"
