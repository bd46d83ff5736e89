"""Data loading: what `mrcnn train` spends around the step on COCO-shaped data (the throughput benchmark times the
step on a fixed batch and sees none of this).

  python benchmarks/data_loading.py                       # synthetic 640-px images (made once under --out)
  python benchmarks/data_loading.py --data /coco          # real COCO 2017 (train2017)

Reports, at the config's input size (r50-fpn: 800 / 1333):
- one sample in one process, one thread: decode, target masks (annToMask), resize + flip; medians and means;
- collating a batch of --batch samples;
- the trainer's loader (`make_train_loader`: its sampler, collate and seeds) in images/s with 0 and --workers
  worker processes (worker start-up excluded: the first batch is not timed);
- padded pixels per image of one epoch's global batches with and without aspect-ratio grouping, relative to each
  image padded alone (from the json sizes, no decoding).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import machine, save


def _padded_ratio(sizes: list[tuple[int, int]], groups, batch: int, divisible: int, seed: int) -> float:
    """Pixels of one epoch's padded global batches / the same images each padded alone."""
    from mrcnn.data.transforms import GlobalBatchSampler
    from mrcnn.model.preprocess import padded_size

    def pixels(idx: list[int]) -> int:
        h, w = padded_size([sizes[i] for i in idx], divisible)
        return len(idx) * h * w

    s = GlobalBatchSampler(len(sizes), batch, seed=seed, groups=groups)
    batches = [s.batch_indices(it) for it in range(len(sizes) // batch)]
    return sum(pixels(idx) for idx in batches) / sum(pixels([i]) for idx in batches for i in idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a COCO 2017 folder (default: synthetic, made under --out)")
    ap.add_argument("--out", default="/tmp/mrcnn-data-bench")
    ap.add_argument("--config", default="r50-fpn")
    ap.add_argument("--samples", type=int, default=48, help="samples timed one by one")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=12, help="timed loader batches per worker setting")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the second loader setting")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    from mrcnn.config import get_config
    from mrcnn.data.coco import CocoDetection
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.data.transforms import GlobalBatchSampler, TrainDataset, TrainTransform, collate
    from mrcnn.model.preprocess import resize_scale
    from mrcnn.training.data import make_train_loader
    from mrcnn.training.distributed import DistInfo

    data = Path(a.data) if a.data else Path(a.out) / "synth640"
    if not a.data and not (data / "annotations" / "instances_train2017.json").exists():
        generate_synthetic(data, n_train=max(a.samples, a.batch * (a.batches + 1)), n_val=1, size=640, seed=0)
    cfg = get_config(a.config)
    cfg.solver.batch = a.batch
    inp = cfg.input
    base = CocoDetection(data, "train2017", logger=lambda m: None)
    ds = TrainDataset(base, TrainTransform(inp.min_size, inp.max_size, inp.hflip_prob), seed=cfg.seed)

    # 1. one sample, one process, one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    parts: dict[str, list[float]] = {"decode": [], "masks": [], "resize_flip": [], "total": []}
    n = min(a.samples, len(base))
    for i in range(n):
        t0 = time.perf_counter()
        image = base._load_image(i)
        t1 = time.perf_counter()
        target = base._target(i)
        t2 = time.perf_counter()
        ds.transform(image, target, torch.Generator().manual_seed(i))
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            parts[k].append(v * 1000)
    instances = statistics.mean(len(base._anns.rows(i)) for i in range(n))
    sample_ms = {k: {"median": statistics.median(v), "mean": statistics.mean(v)} for k, v in parts.items()}
    items = [ds[i] for i in range(a.batch)]
    collate_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        collate(items, inp.size_divisible)
        collate_ms.append((time.perf_counter() - t0) * 1000)
    torch.set_num_threads(threads)

    # 2. the trainer's loader, 0 and N workers
    info = DistInfo(device=torch.device("cpu"))
    cfg.solver.max_iter = a.batches + 1
    sampler = GlobalBatchSampler(len(ds), a.batch, seed=cfg.seed, groups=base.aspect_groups())
    loader_img_s = {}
    for w in sorted({0, a.workers}):
        it = iter(make_train_loader(ds, sampler, cfg, info, 0, w))
        next(it)  # worker start-up and the first batch
        t0 = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        loader_img_s[w] = a.batches * a.batch / (time.perf_counter() - t0)
        del it

    # 3. padding with and without grouping (json sizes, the config's resize)
    sizes = []
    for i in range(len(base)):
        h, w = base.image_size(i)
        sc = resize_scale(h, w, inp.min_size, inp.max_size)
        sizes.append((int(h * sc), int(w * sc)))
    groups = base.aspect_groups()
    padded = {
        "grouped": _padded_ratio(sizes, groups, a.batch, inp.size_divisible, cfg.seed),
        "ungrouped": _padded_ratio(sizes, None, a.batch, inp.size_divisible, cfg.seed),
    }

    print(
        f"data {data} ({len(base)} images, {instances:.1f} instances per image in the timed ones), "
        f"{a.config}: {inp.min_size} / {inp.max_size}"
    )
    print(
        "one sample, 1 thread (median / mean ms): "
        + ", ".join(f"{k} {v['median']:.1f} / {v['mean']:.1f}" for k, v in sample_ms.items())
    )
    print(f"collate {a.batch}: {statistics.median(collate_ms):.1f} ms")
    print(
        "trainer loader: "
        + ", ".join(f"{w} workers {v:.1f} img/s" for w, v in loader_img_s.items())
        + f" ({machine('cpu')['cpus']} cores)"
    )
    print(
        f"padded pixels / each image padded alone, batch {a.batch}: grouped {padded['grouped']:.3f}, "
        f"ungrouped {padded['ungrouped']:.3f} ({groups.count(0)} landscape, {groups.count(1)} portrait or square)"
    )
    if not a.no_save:
        p = save(
            "data_loading",
            {
                "machine": machine("cpu"),
                "args": vars(a),
                "images": len(base),
                "instances_per_image": instances,
                "sample_ms": sample_ms,
                "collate_ms": statistics.median(collate_ms),
                "loader_img_s": {str(k): v for k, v in loader_img_s.items()},
                "padded_over_alone": padded,
            },
            a.json,
        )
        print(f"saved {p}")


if __name__ == "__main__":
    main()
