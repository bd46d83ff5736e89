"""Memory of `mrcnn predict` against the image's resolution: peak resident memory of one predict process on a
4000x3000 photo-sized image and on a 640x480 one, same model and picture. Goal: the large
one's peak <= 1.5 x the small one's + its decoded image (4000 x 3000 x 3 bytes), i.e. memory does not scale with the
resolution beyond the decoded image and one pasted mask at a time.

  python benchmarks/predict_memory.py [--config shapes-tiny] [--score 0.05]

Each run is a fresh process running `mrcnn predict` (its peak RSS is its VmHWM); the model has random weights
(seeded), so it keeps many low-score detections: every kept one is pasted, drawn and encoded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import machine, save
from PIL import Image

_CHILD = """
import sys
from mrcnn.cli.main import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(f"VmHWM {hwm}")
sys.exit(code or 0)
"""


def peak_rss_mb(args: list[str]) -> tuple[float, str]:
    """The peak resident memory (VmHWM, read by the process itself at its end: a forked child's own rusage would
    count the parent's pages it started with) of one `mrcnn` command in a fresh process."""
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2")
    )
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or not lines[-1].startswith("VmHWM"):
        raise SystemExit(f"predict failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return int(lines[-1].split()[1]) / 1024, lines[-2]


def photo(h: int, w: int) -> np.ndarray:
    """A smooth 'photo' with shapes at any size (the same picture at every resolution)."""
    from mrcnn.data.synth import render_sample

    img = Image.fromarray(render_sample(0, "val2017", 3, size=512)[0]).resize((w, h), Image.BILINEAR)
    noise = np.random.default_rng(0).normal(0, 6, (h, w, 3))
    return np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="shapes-tiny")
    ap.add_argument("--score", type=float, default=0.05)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    import torch

    from mrcnn.config import get_config
    from mrcnn.model import build_model
    from mrcnn.model.checkpoint import save_checkpoint

    scratch = tempfile.TemporaryDirectory(prefix="mrcnn-predict-memory-")  # removed when main ends
    tmp = Path(scratch.name)
    torch.manual_seed(0)
    cfg = get_config(a.config)
    cfg.model.num_classes = 6
    ckpt = tmp / "model.pt"
    save_checkpoint(
        ckpt,
        {
            "config": cfg.to_dict(),
            "class_names": ["a", "b", "c", "d", "e"],
            "model": build_model(cfg.model).state_dict(),
        },
    )
    rows = {}
    for name, (h, w) in {"640x480": (480, 640), "4000x3000": (3000, 4000)}.items():
        path = tmp / f"{name}.jpg"
        Image.fromarray(photo(h, w)).save(path, quality=92)
        peak, line = peak_rss_mb(
            [
                "predict",
                str(ckpt),
                str(path),
                "--out",
                str(tmp / f"out-{name}"),
                "--score",
                str(a.score),
                "--device",
                "cpu",
            ]
        )
        rows[name] = {"peak_rss_mb": round(peak, 1), "decoded_mb": round(h * w * 3 / 2**20, 1), "predict": line}
        print(f"{name}: peak RSS {peak:.0f} MB ({line})")
    small, large = rows["640x480"], rows["4000x3000"]
    bound = 1.5 * small["peak_rss_mb"] + large["decoded_mb"]
    print(
        f"4000x3000 peak {large['peak_rss_mb']:.0f} MB vs bound 1.5 x {small['peak_rss_mb']:.0f} + "
        f"{large['decoded_mb']:.0f} = {bound:.0f} MB: {'met' if large['peak_rss_mb'] <= bound else 'NOT met'}"
    )
    result = {
        "config": a.config,
        "score": a.score,
        "rows": rows,
        "bound_mb": round(bound, 1),
        "met": large["peak_rss_mb"] <= bound,
        "machine": machine("cpu"),
    }
    if not a.no_save:
        save("predict_memory", result, a.json)


if __name__ == "__main__":
    main()
