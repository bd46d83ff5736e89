"""Training throughput: our Mask R-CNN training step vs torchvision's maskrcnn_resnet50_fpn, same batch, same image
size, same device, same run. Prints images/s of each and the ratio (ours / torchvision).

  python benchmarks/train_throughput.py                       # CPU, fp32, 2 x 512x512
  python benchmarks/train_throughput.py --device cuda --amp fp16 --channels-last --batch 4 --size 800
  python benchmarks/train_throughput.py --batch 4 --size 800 --ops-only --foreach   # aten ops per step, any machine
  python benchmarks/train_throughput.py --device cuda --amp bf16 --channels-last --batch 4 --size 800 --compile both

The ratio is of median step times, with a 95% bootstrap interval over the paired rounds (steps take turns).

Both models: ResNet-50-FPN, frozen BN, first two stages frozen, 512 RoIs/img, SGD step included, the same
(random) weights: torchvision's initialisation, converted into ours.
torchvision gets the same already-sized images (its internal resize is then a no-op) and the same targets.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import machine, ratio_interval, save, timed_interleaved


def make_batch(n: int, size: int, num_classes: int, device: str, seed: int = 0, width: int = 0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    height, width = size, width or size
    for _ in range(n):
        images.append(torch.rand(3, height, width, generator=g))
        k = 6
        xy = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 0.6
        wh = 24 + torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 0.35
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width - 1.0, height - 1.0]))], 1)
        masks = torch.zeros(k, height, width, dtype=torch.uint8)
        for j, b in enumerate(boxes.long().tolist()):
            masks[j, b[1] : b[3], b[0] : b[2]] = 1
        labels = torch.randint(1, num_classes, (k,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return [i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def torchvision_model(num_classes: int, size: int, width: int = 0):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    # min/max size equal to the images' sides: torchvision's internal resize is a no-op
    return MaskRCNN(backbone, num_classes=num_classes, min_size=size, max_size=max(size, width))


_NO_KERNEL = {
    "aten.empty",
    "aten.empty_strided",
    "aten.empty_like",
    "aten.lift_fresh",
    "aten.scalar_tensor",
    "profiler._record_function_enter_new",
    "profiler._record_function_exit",
}


def count_ops(step) -> dict[str, int]:
    """aten ops one step dispatches (forward, backward, optimizer): "all", and "compute", those that are not views
    or allocations. A host-bound GPU step costs host time roughly in proportion to its dispatched ops; this count
    does not depend on the device's speed, so it can be measured on any machine."""
    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC2701 - the peer's own helper

    class Count(TorchDispatchMode):
        n = {"all": 0, "compute": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n["all"] += 1
            if not (func.is_view or str(func.overloadpacket) in _NO_KERNEL):
                self.n["compute"] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        step()
    return dict(c.n)


def profile(step, device: str, path: str, rows: int = 30) -> None:
    """Top ops of a few steps by self device time (CUDA) or self CPU time, written to `path`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with prof(activities=acts) as p:
        for _ in range(3):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    text = p.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    if device.startswith("cuda"):
        text += "\n\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)
    Path(path).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512, help="image height (and width unless --width)")
    ap.add_argument("--width", type=int, default=0, help="image width (default: --size)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="timed steps per model (the models take turns)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="ours in NHWC; torchvision is timed in NHWC and in NCHW and the faster one counts",
    )
    ap.add_argument(
        "--native-roi-align",
        default="off",
        choices=["off", "on", "both"],
        help="CUDA: RoIAlign of ours on torchvision's op per level (off) or the native multi-level "
        "kernel (on), or time both (both: 'mrcnn' off, 'mrcnn_native_roi' on)",
    )
    ap.add_argument(
        "--compile",
        default="off",
        choices=["off", "on", "both"],
        help="torch.compile ours' backbone + FPN (`mrcnn train --compile`): off, on, or both ('mrcnn' "
        "eager, 'mrcnn_compiled' compiled, with the native RoIAlign unless --native-roi-align off: "
        "compare it with 'mrcnn_native_roi' then); compiling happens in the warm-up steps",
    )
    ap.add_argument(
        "--ops-only",
        action="store_true",
        help="only count the aten ops of one step per model (no timing, nothing saved)",
    )
    ap.add_argument(
        "--foreach",
        action="store_true",
        help="SGD with foreach=True, as torch picks on CUDA (on CPU it picks the per-tensor loop)",
    )
    ap.add_argument("--profile", default=None, metavar="PREFIX", help="write op tables to PREFIX-<model>.txt")
    ap.add_argument("--json", default=None, help="write results here (default: benchmarks/results/...)")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    from mrcnn.config import get_config
    from mrcnn.model import build_model
    from mrcnn.model.convert import convert_torchvision_state_dict
    from mrcnn.model.preprocess import batch_images

    num_classes = 81
    dev = a.device
    images, targets = make_batch(a.batch, a.size, num_classes, dev, width=a.width)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)

    def make_step(model, forward, mf, compiled=False):
        model.to(dev).to(memory_format=mf).train()
        if compiled:
            model.compile_backbone()
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=1e-4,
            momentum=0.9,
            foreach=True if a.foreach else None,
        )
        scaler = torch.amp.GradScaler(dev.split(":")[0], enabled=a.amp == "fp16")

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
                losses = forward(model)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()

        return step

    # the same weights in both models (torchvision's random init, converted): the same proposals and RoIs, so the
    # two steps do the same work (models with different random weights send different RoI counts to each level)
    mf_ours = torch.channels_last if a.channels_last else torch.contiguous_format
    tv_formats = (
        {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}
        if a.channels_last
        else {"nchw": torch.contiguous_format}
    )
    steps = {}
    for name, mf in tv_formats.items():
        torch.manual_seed(0)
        tv = torchvision_model(num_classes, a.size, a.width)
        steps[f"torchvision_{name}"] = make_step(tv, lambda m: m(images, targets), mf)
    cfg = get_config("r50-fpn")
    cfg.model.num_classes = num_classes
    ours = build_model(cfg.model)
    ours.load_state_dict(convert_torchvision_state_dict(tv.state_dict()))
    batch, sizes = batch_images(images, 32)
    batch, sizes = batch.to(dev).contiguous(memory_format=mf_ours), sizes.to(dev)
    variants = {"mrcnn": (a.native_roi_align == "on", a.compile == "on")}
    if a.native_roi_align == "both":
        variants["mrcnn_native_roi"] = (True, False)
    if a.compile == "both":
        variants["mrcnn_compiled"] = (a.native_roi_align != "off", True)
    compiled_variants = {name for name, (_, compiled) in variants.items() if compiled}
    ours_step = {}
    for name, (native_roi, compiled) in variants.items():
        twin = ours
        if name != "mrcnn":
            twin = build_model(cfg.model)
            twin.load_state_dict(ours.state_dict())
        twin.set_ops(twin.ops.replace(cuda_roi_align=native_roi))
        ours_step[name] = make_step(twin, lambda m: m(batch, sizes, targets), mf_ours, compiled)
    for name in compiled_variants - {"mrcnn"}:  # a machine without a working inductor (no Triton, no compiler)
        try:  # still times the eager variants
            ours_step[name]()
        except Exception as e:
            print(f"{name} dropped: compiling failed: {str(e).strip().splitlines()[0][:200]}")
            del ours_step[name]
    steps = {**ours_step, **steps}

    if a.ops_only:
        for k, step in steps.items():
            if k in compiled_variants:
                continue  # compiled: not countable by a dispatch mode (below)
            step()  # first-step work (lazy init) is not a step's
            print(f"{k}: aten ops per step {count_ops(step)}")
        return
    times, allocs = timed_interleaved(steps, a.iters, a.warmup, dev)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: a.batch / t for k, t in med.items()}
    peer = max((k for k in ips if k.startswith("torchvision")), key=ips.get)
    ratio = ips["mrcnn"] / ips[peer]
    ratio_min = min(times[peer]) / min(times["mrcnn"])
    # single steps vary by +-30% on a host-bound GPU step: a goal such as ">= 1.3x" is met only where the interval's
    # lower end clears it
    ci = {k: ratio_interval(times[peer], times[k]) for k in steps if k.startswith("mrcnn")}
    print(f"device {dev} amp {a.amp} channels_last {a.channels_last} batch {a.batch} size {a.size}x{a.width or a.size}")
    for k in steps:
        print(
            f"{k:18s} {ips[k]:7.2f} img/s (median {med[k] * 1000:.1f} ms/step, min {min(times[k]) * 1000:.1f}, "
            f"max {max(times[k]) * 1000:.1f}; {len(times[k])} steps)"
        )
    print(
        f"ratio mrcnn/{peer}: {ratio:.3f}x (median steps, 95% interval {ci['mrcnn'][0]:.3f}-{ci['mrcnn'][1]:.3f}; "
        f"{ratio_min:.3f}x by fastest steps)"
    )
    for k in ours_step:
        if k != "mrcnn":
            lo, hi = ci[k]
            print(f"ratio {k}/{peer}: {ips[k] / ips[peer]:.3f}x (median steps, 95% interval {lo:.3f}-{hi:.3f})")
    if allocs:
        print(
            "cudaMalloc calls / allocator retries during the timed steps: "
            + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in allocs.items())
            + f"; peak allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        )
    # a TorchDispatchMode sees eager aten calls only: compiled code runs its fused kernels past it, so the compiled
    # variant is not counted (its count would be the eager one's)
    ops = {k: count_ops(step) for k, step in steps.items() if k not in compiled_variants}
    print(
        "aten ops per step (all / not views or allocations; eager variants): "
        + ", ".join(f"{k} {v['all']}/{v['compute']}" for k, v in ops.items())
    )
    if a.profile:
        for k, step in steps.items():
            profile(step, dev, f"{a.profile}-{k}.txt")
    if not a.no_save:
        p = save(
            "train_throughput",
            {
                "machine": machine(dev),
                "args": vars(a),
                "img_s": ips,
                "peer": peer,
                "ours_img_s": ips["mrcnn"],
                "torchvision_img_s": ips[peer],
                "ratio": ratio,
                "ratio_ci95": {k: [round(x, 4) for x in v] for k, v in ci.items()},
                "ratio_fastest_steps": ratio_min,
                "cuda_mallocs_and_retries": allocs,
                "aten_ops_per_step": ops,
                "step_ms": {k: [round(t * 1000, 2) for t in v] for k, v in times.items()},
            },
            a.json,
        )
        print(f"saved {p}")


if __name__ == "__main__":
    main()
