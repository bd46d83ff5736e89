"""CPU runtimes side by side: R-50-FPN with the same converted weights everywhere, a real photograph at the default
800/1333 sizes, end to end (resize + pad, network, boxes to the image and masks pasted), calls interleaved round by
round, the same thread count for every runtime.

  python benchmarks/cpu_runtimes.py [--iters 7] [--warmup 1] [--threads 2] [--photo motorcycle_left.png]

Rows: torchvision eager fp32; ours eager fp32 (the inference levers, what `mrcnn predict` runs for a checkpoint);
ours eager bf16 (CPUs with AVX512-BF16 / AMX); ONNX Runtime on our portable export (fp32) and on its INT8 version;
OpenVINO on the portable export with the f32 hint and, where the CPU has bfloat16, the bf16 hint (OpenVINO's default
on such CPUs); OpenVINO on the INT8 export (`mrcnn export --int8` then `mrcnn build --runtime openvino`). The OpenVINO
rows run through `mrcnn`'s OpenVinoPredictor: an IR converted from the ONNX is the graph `core.read_model` of that
ONNX gives, and the pre- and postprocessing are the same Python for every exported row.

INT8 calibration: ModelOpt (entropy) on the other scikit-image photographs (not the timed one), preprocessed as the
export's predictors do.

Ratios: each row's median against torchvision's and against "the peer", OpenVINO on the float32 export with the bf16
hint (f32 where the CPU has no bfloat16), with 95% bootstrap intervals over the paired rounds. Goals (issue 29):
  1. our fastest shipped CPU path >= 1.3x the peer      2. OpenVINO INT8 >= 1.5x the peer
  4. pre- plus postprocessing <= 15% of the fastest path's end-to-end time (the breakdown: PNG decode, resize + pad,
     network, postprocess + paste, each timed on its own over the same rounds)
Goal 3 (the demo model's AP drops) is `mrcnn demo`'s table.

Weights: torchvision's architecture with random weights made well conditioned (tests/helpers.py `tame`, seed 1):
about 100 detections per photograph, so the mask head and the pasting work as much as on a busy real image.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, ratio_interval, save, timed_interleaved
from infer_throughput import photo, photo_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.tame: the equivalence tests' weights

CALIBRATION_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
PEER = "OpenVINO fp32 export, bf16 hint"
PEER_F32 = "OpenVINO fp32 export, f32 hint"


def breakdown(pred, path: Path | None, image: torch.Tensor, iters: int) -> dict:
    """Median ms of each stage of an exported predictor's call on one image: decode (the file, where there is one),
    resize + pad, network (the runtime's run), postprocess + paste."""
    from mrcnn.deploy.predict import read_image
    from mrcnn.model.preprocess import (
        batch_images,
        min_batch_shape,
        postprocess_detections,
        resize_image,
        to_float_image,
    )

    p = pred.preprocess
    stages: dict[str, list[float]] = {"decode": [], "resize_pad": [], "network": [], "postprocess_paste": []}
    for _ in range(iters):
        t0 = time.perf_counter()
        if path is not None:
            read_image(path)
        t1 = time.perf_counter()
        resized = [resize_image(to_float_image(image), int(p["min_size"]), int(p["max_size"]))]
        batch, sizes = batch_images(resized, pred.size_divisible, min_batch_shape(pred.cfg.input))  # (as predictors)
        t2 = time.perf_counter()
        out = pred.run(batch, sizes)
        t3 = time.perf_counter()
        postprocess_detections(out, sizes, [tuple(image.shape[-2:])], paste=pred.paste)
        t4 = time.perf_counter()
        for k, a, b in (
            ("decode", t0, t1),
            ("resize_pad", t1, t2),
            ("network", t2, t3),
            ("postprocess_paste", t3, t4),
        ):
            stages[k].append(b - a)
    ms = {k: 1e3 * statistics.median(v) for k, v in stages.items()}
    total = sum(ms.values())
    ms["pre_post_share"] = (ms["resize_pad"] + ms["postprocess_paste"]) / (total - ms["decode"])
    ms["pre_post_share_with_decode"] = (ms["decode"] + ms["resize_pad"] + ms["postprocess_paste"]) / total
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photo", default="motorcycle_left.png", help="one of scikit-image's photographs")
    ap.add_argument("--calib", type=int, default=4, help="calibration photographs for the INT8 export (<= 4)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import openvino as ov
    from helpers import tame
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.deploy import load_artifact
    from mrcnn.deploy.exported import ExportedPredictor
    from mrcnn.deploy.openvino_runtime import build_ir, cpu_bf16
    from mrcnn.export import export_checkpoint
    from mrcnn.export.quantize import quantize_onnx
    from mrcnn.model.convert import convert_torchvision
    from mrcnn.model.inference import cpu_has_bf16

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tame(tv)
    tv.eval()
    image = photo(args.photo)
    scratch = tempfile.TemporaryDirectory(prefix="mrcnn-cpu-")  # checkpoints and exports: removed when main ends
    tmp = Path(scratch.name)
    torch.save({"model": tv.state_dict()}, tmp / "tv.pth")
    convert_torchvision(str(tmp / "tv.pth"), str(tmp / "ours.pt"))
    quiet = lambda m: None  # noqa: E731
    t0 = time.perf_counter()
    export_checkpoint(tmp / "ours.pt", tmp / "ours.onnx", flavour="portable", log=quiet)
    calib = [photo(p) for p in CALIBRATION_PHOTOS if p != args.photo][: args.calib]
    t1 = time.perf_counter()
    quantize_onnx(tmp / "ours.onnx", tmp / "ours-int8.onnx", calib, log=print)
    t2 = time.perf_counter()
    print(f"export {t1 - t0:.1f} s, INT8 quantization ({len(calib)} photographs) {t2 - t1:.1f} s")
    core = ov.Core()
    bf16 = cpu_bf16(core)
    build_ir(tmp / "ours.onnx", tmp / "f32.xml", precision="f32", log=quiet)
    build_ir(tmp / "ours-int8.onnx", tmp / "int8.xml", precision="f32", log=quiet)
    if bf16:
        build_ir(tmp / "ours.onnx", tmp / "bf16.xml", precision="bf16", log=quiet)

    def exported(path: Path):
        return load_artifact(
            path, "cpu", log=quiet, threads=args.threads, **({"spin": False} if path.suffix == ".onnx" else {})
        )

    preds = {
        "ours eager fp32": load_artifact(tmp / "ours.pt", "cpu", log=quiet),
        "ONNX Runtime fp32 export": exported(tmp / "ours.onnx"),
        "ONNX Runtime INT8 export": exported(tmp / "ours-int8.onnx"),
        PEER_F32: exported(tmp / "f32.xml"),
        "OpenVINO INT8 export": exported(tmp / "int8.xml"),
    }
    if cpu_has_bf16():
        preds["ours eager bf16"] = load_artifact(tmp / "ours.pt", "cpu", log=quiet, precision="bf16")
    if bf16:
        preds[PEER] = exported(tmp / "bf16.xml")
    peer = PEER if bf16 else PEER_F32
    runners = {"torchvision eager fp32": lambda: tv([image.float() / 255])}
    runners.update({k: (lambda p=p: p([image])) for k, p in preds.items()})
    counts = {}
    with torch.inference_mode():
        for name, run in runners.items():
            counts[name] = len(run()[0]["scores"])
        times, _ = timed_interleaved(
            {k: (lambda r=r: torch.inference_mode()(r)()) for k, r in runners.items()}, args.iters, args.warmup, "cpu"
        )
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {
            "median_s": med,
            "p90_s": sorted(ts)[max(0, math.ceil(0.9 * len(ts)) - 1)],
            "detections": counts[name],
            "vs_torchvision": statistics.median(times["torchvision eager fp32"]) / med,
            "vs_torchvision_95ci": list(ratio_interval(times["torchvision eager fp32"], ts)),
            "vs_peer": statistics.median(times[peer]) / med,
            "vs_peer_95ci": list(ratio_interval(times[peer], ts)),
        }
    shipped = [k for k in rows if k not in ("torchvision eager fp32", PEER, PEER_F32)]
    fastest = min(shipped, key=lambda k: rows[k]["median_s"])
    with torch.inference_mode():
        exported_row = isinstance(preds.get(fastest), ExportedPredictor)  # (the stages of an exported predictor)
        parts = breakdown(preds[fastest], photo_path(args.photo), image, args.iters) if exported_row else None
    print(
        f"{args.photo} {tuple(image.shape[1:])} at 800/1333, {args.threads} threads, {args.iters} rounds; peer: {peer}"
    )
    print(f"{'':34s} {'median s':>9s} {'p90 s':>8s} {'vs torchvision':>22s} {'vs peer':>22s} {'dets':>5s}")
    for name, r in rows.items():
        tvs = f"{r['vs_torchvision']:.2f}x [{r['vs_torchvision_95ci'][0]:.2f}, {r['vs_torchvision_95ci'][1]:.2f}]"
        prs = f"{r['vs_peer']:.2f}x [{r['vs_peer_95ci'][0]:.2f}, {r['vs_peer_95ci'][1]:.2f}]"
        print(f"{name:34s} {r['median_s']:9.3f} {r['p90_s']:8.3f} {tvs:>22s} {prs:>22s} {r['detections']:5d}")
    goals = {
        "peer": peer,
        "fastest_shipped": fastest,
        "1_fastest_vs_peer_ge_1.3": rows[fastest]["vs_peer"] >= 1.3,
        "2_openvino_int8_vs_peer_ge_1.5": rows["OpenVINO INT8 export"]["vs_peer"] >= 1.5,
    }
    if parts:
        print(
            f"breakdown of {fastest} (median ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if not k.startswith("pre_post"))
            + f"; resize + pad + postprocess = {100 * parts['pre_post_share']:.1f}% of the call "
            f"({100 * parts['pre_post_share_with_decode']:.1f}% with the PNG decode)"
        )
        goals["4_pre_post_le_15pct"] = parts["pre_post_share"] <= 0.15
    print("goals:", goals)
    payload = {
        "photo": args.photo,
        "image": list(image.shape[1:]),
        "threads": args.threads,
        "iters": args.iters,
        "openvino": ov.__version__,
        "cpu_bf16": bf16,
        "calibration": {
            "photos": [p for p in CALIBRATION_PHOTOS if p != args.photo][: args.calib],
            "method": "entropy",
        },
        "rows": rows,
        "breakdown": parts,
        "goals": goals,
        "machine": machine("cpu"),
    }
    print(f"wrote {save('cpu_runtimes', payload, args.out)}")


if __name__ == "__main__":
    main()
