"""COCO-train-sized annotations: the dataset's load time and memory, and the memory each DataLoader worker copies.

  python benchmarks/coco_scale.py                  # a synthetic json shaped like COCO train2017 (no pixels)
  python benchmarks/coco_scale.py --data /coco     # real COCO 2017 (annotations/instances_train2017.json)

Ours: `mrcnn.data.CocoDetection` (the json checked, then packed into numpy arrays). Peer:
`torchvision.datasets.CocoDetection`, a pycocotools COCO index of the json objects, which torchvision's detection
reference trains from. Each side runs in a fresh process:
- load the dataset: seconds, and resident memory added once it is built;
- a full garbage collection (Python runs one now and then in the trainer and in each worker): it walks every
  tracked container object, and in a forked worker writes to each one's header, a copy of its page;
- pickle it: the bytes each worker receives under spawn / forkserver (Python 3.14's default start method on Linux);
- fork --workers processes (as the DataLoader does) that each read the targets (masks decoded, as annToMask) of every
  --stride-th item, one epoch's share of one of the trainer's 4 workers: the private memory each gains is what it
  copied from the main process. A worker that reads shared Python objects changes their reference counts, and each
  page it writes that way becomes its own copy.
The synthetic json: 118,287 images (COCO's six common sizes), 7.3 instances per image on average (Poisson), 1 or 2
polygons of 8-45 points each, 0.9% crowd regions as uncompressed RLE: 460 MB, COCO's file is 448 MB. Its image files
are empty (only annotations are read).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine, save

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COCO_SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (425, 640), (640, 640)]


def synthesize(root: Path, n_images: int, per_image: float = 7.3, seed: int = 0) -> tuple[int, int]:
    """A COCO-train-shaped instances json under root/annotations and empty image files under root/train2017."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train2017").mkdir(exist_ok=True)
    images, anns = [], []
    for k, count in enumerate(rng.poisson(per_image, n_images).tolist()):
        h, w = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
        iid = k + 1
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "height": h, "width": w})
        (root / "train2017" / f"{iid:012d}.jpg").touch()
        for _ in range(count):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            crowd = bool(rng.random() < 0.009)
            if crowd:  # uncompressed RLE of random runs, as COCO's crowd regions
                cuts = np.sort(rng.choice(h * w, 40, replace=False))
                seg = {"counts": np.diff(np.r_[0, cuts, h * w]).tolist(), "size": [h, w]}
            else:
                seg = []
                for _ in range(1 + int(rng.random() < 0.12)):
                    t = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(8, 45))))
                    xy = np.stack([x + bw / 2 * (1 + np.cos(t)), y + bh / 2 * (1 + np.sin(t))], 1)
                    seg.append(xy.ravel().round(2).tolist())
            anns.append(
                {
                    "segmentation": seg,
                    "area": round(bw * bh * 0.6, 4),
                    "iscrowd": int(crowd),
                    "image_id": iid,
                    "bbox": [round(v, 2) for v in (x, y, bw, bh)],
                    "category_id": COCO_CATEGORY_IDS[int(rng.integers(80))],
                    "id": len(anns) + 1,
                }
            )
    doc = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in COCO_CATEGORY_IDS],
    }
    tmp = root / "annotations" / "instances_train2017.json.tmp"
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.rename(root / "annotations" / "instances_train2017.json")
    return len(images), len(anns)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _private_mib() -> float:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024


def _side(side: str, root: Path, workers: int, stride: int) -> dict:
    """One side's numbers, in this (fresh) process."""
    import torch  # noqa: F401 - both sides run with torch imported, as in the trainer

    gc.collect()
    rss0, t0 = _rss_mib(), time.perf_counter()
    if side == "ours":
        from mrcnn.data.coco import CocoDetection

        ds = CocoDetection(root, "train2017", logger=lambda m: None)
        n = len(ds)
        read = ds._target
    else:
        import contextlib
        import io

        from torchvision.datasets import CocoDetection as TvCoco

        with contextlib.redirect_stdout(io.StringIO()):
            ds = TvCoco(str(root / "train2017"), str(root / "annotations" / "instances_train2017.json"))
        n = len(ds)

        def read(i: int) -> None:  # torchvision's reference: the image's annotations, non-crowd masks decoded
            for a in ds._load_target(ds.ids[i]):
                if not a.get("iscrowd", 0):
                    ds.coco.annToMask(a)

    load_s = time.perf_counter() - t0
    gc.collect()
    rss = _rss_mib() - rss0
    gc_s = []
    for _ in range(3):  # a full collection walks every tracked container object (a worker's copies its headers)
        t0 = time.perf_counter()
        gc.collect()
        gc_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pickled = len(pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL))
    pickle_s = time.perf_counter() - t0

    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()

    def worker(w: int) -> None:
        before, t = _private_mib(), time.perf_counter()
        for i in range(w, n, stride):
            read(i)
        q.put((_private_mib() - before, time.perf_counter() - t))

    procs = [ctx.Process(target=worker, args=(w,)) for w in range(workers)]
    for p in procs:
        p.start()
    got = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return {
        "images": n,
        "load_s": load_s,
        "rss_mib": rss,
        "gc_collect_s": sorted(gc_s)[1],
        "gc_tracked_objects": len(gc.get_objects()),
        "pickled_mib": pickled / 2**20,
        "pickle_s": pickle_s,
        "worker_private_mib": [g for g, _ in got],
        "worker_read_s": [s for _, s in got],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a COCO 2017 folder (default: synthetic, made once under --out)")
    ap.add_argument("--out", default="/tmp/mrcnn-coco-scale")
    ap.add_argument("--images", type=int, default=118287, help="synthetic: number of images")
    ap.add_argument("--workers", type=int, default=2, help="forked reader processes per side, run at once")
    ap.add_argument("--stride", type=int, default=4, help="each reader reads every stride-th item")
    ap.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("coco_scale: needs Linux /proc (private memory of forked processes)")
    root = Path(a.data) if a.data else Path(a.out) / f"coco{a.images}"
    if a.side:  # a child process: one side, one json line
        print(json.dumps(_side(a.side, root, a.workers, a.stride)))
        return
    if not a.data and not (root / "annotations" / "instances_train2017.json").exists():
        t0 = time.perf_counter()
        n_img, n_ann = synthesize(root, a.images)
        print(f"synthesized {n_img} images, {n_ann} annotations in {time.perf_counter() - t0:.0f} s under {root}")
    ann_file = root / "annotations" / "instances_train2017.json"
    res = {}
    for side in ("ours", "peer"):
        cmd = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--data",
            str(root),
            "--workers",
            str(a.workers),
            "--stride",
            str(a.stride),
        ]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        )
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"coco_scale: the {side} side failed: {out.stderr.strip().splitlines()[-1:]}")
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[side]
        print(
            f"{side:5} load {r['load_s']:.1f} s, +{r['rss_mib']:.0f} MiB resident, a full gc.collect() "
            f"{r['gc_collect_s']:.2f} s ({r['gc_tracked_objects']} objects), pickled {r['pickled_mib']:.0f} "
            f"MiB ({r['pickle_s']:.1f} s); each forked reader of 1/{a.stride} of the items gained "
            + ", ".join(f"{g:.0f}" for g in r["worker_private_mib"])
            + " MiB private memory ("
            + ", ".join(f"{s:.0f}" for s in r["worker_read_s"])
            + " s)"
        )
    o, p = res["ours"], res["peer"]
    ratios = {
        "load_time": o["load_s"] / p["load_s"],
        "resident": o["rss_mib"] / p["rss_mib"],
        "gc_collect": o["gc_collect_s"] / p["gc_collect_s"],
        "pickled": o["pickled_mib"] / p["pickled_mib"],
        "worker_private": float(np.mean(o["worker_private_mib"]) / np.mean(p["worker_private_mib"])),
    }
    print("ours / peer: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if not a.no_save:
        path = save(
            "coco_scale",
            {
                "machine": machine("cpu"),
                "args": vars(a),
                "annotation_file_mib": ann_file.stat().st_size / 2**20,
                **res,
                "ratios": ratios,
            },
            a.json,
        )
        print(f"saved {path}")


if __name__ == "__main__":
    main()
