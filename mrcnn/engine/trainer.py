"""The training loop: AMP (bf16 | fp16 | off), DDP (torchrun; nccl on GPU, gloo on CPU), gradient accumulation,
channels-last, atomic checkpoints with exact resume, periodic COCO evaluation, metrics.jsonl.

Determinism by construction: the global batch of iteration `it` is a pure function of (seed, it), each sample's
augmentation and fg/bg sampling seeds are pure functions of (seed, epoch, index), and losses are per-image means
averaged over images. Hence batch B x accum 2, DDP over 2 ranks, and one process with batch 2B see the same
samples and compute the same gradient, and a resumed run continues exactly where the killed one stopped.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from mrcnn.config import Config
from mrcnn.engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from mrcnn.engine.ema import ModelEMA
from mrcnn.engine.evaluation import evaluate, format_table
from mrcnn.engine.progress import reporter
from mrcnn.engine.stop import StopOnSignal, TrainingStopped
from mrcnn.errors import MrcnnError
from mrcnn.model.preprocess import min_batch_shape
from mrcnn.runtime import parse_device

clock = time.perf_counter  # the loop's timings (metrics rows, the time budget); a test can run them on a fake clock

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


# -- distributed helpers ----------------------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process group was joined here: left (destroyed) at the end of train()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda": this process's GPU (torchrun's LOCAL_RANK), an explicit index for set_device
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)


def _agree(finite: bool, stop: bool, info: DistInfo) -> tuple[bool, bool]:
    """(every rank's step is finite, some rank was asked to stop): one all-reduce per iteration under DDP."""
    if info.world == 1:
        return finite, stop
    t = torch.tensor([1.0 if finite else 0.0, 0.0 if stop else 1.0],
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    ok, go_on = t.tolist()
    return ok > 0.5, go_on < 0.5


# -- schedule -------------------------------------------------------------------------------------------------------

def lr_factor(it: int, cfg: Config) -> float:
    """Linear warmup, then multistep decay (maskrcnn-benchmark's WarmupMultiStepLR, the default) or a half cosine
    from 1 to 0 over the run (detectron2's WarmupCosineLR: `solver.lr_schedule=cosine`)."""
    s = cfg.solver
    f = 1.0
    if it < s.warmup_iters:
        alpha = it / max(s.warmup_iters, 1)
        f = s.warmup_factor * (1 - alpha) + alpha
    if s.lr_schedule == "cosine":
        return f * 0.5 * (1.0 + math.cos(math.pi * min(it, s.max_iter) / max(s.max_iter, 1)))
    milestones = [int(round(frac * s.max_iter)) for frac in s.steps]
    return f * (s.gamma ** sum(1 for m in milestones if it >= m))


def scaled_lr(cfg: Config, world: int) -> float:
    s = cfg.solver
    return s.base_lr * (s.batch * s.accum * world) / s.lr_reference_batch


def make_optimizer(model: torch.nn.Module, cfg: Config, world: int) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=scaled_lr(cfg, world), momentum=cfg.solver.momentum,
                           weight_decay=cfg.solver.weight_decay)


# -- data -----------------------------------------------------------------------------------------------------------

def loader_workers(requested: int, info: DistInfo) -> int:
    """`solver.num_workers`, where -1 (auto) is 0 on a CPU device and min(4, cores per rank - 1) on a GPU."""
    if requested < -1:
        raise MrcnnError(f"--workers must be >= 0 (or -1: auto), got {requested}")
    if requested >= 0:
        return requested
    if info.device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by torchrun
    return max(0, min(4, cores // ranks_here - 1))


def make_train_loader(train_ds, sampler, cfg: Config, info: DistInfo, start_iter: int, workers: int):
    """This rank's micro-batches for iterations start_iter..max_iter-1, collated (and pinned for a GPU)."""
    from mrcnn.data.transforms import collate

    s = cfg.solver
    # (epoch, index) keys: augmentation seeds need no per-worker epoch state
    return torch.utils.data.DataLoader(
        train_ds, batch_sampler=sampler.micro_batches(start_iter, s.max_iter, info.rank, info.world, s.accum),
        collate_fn=functools.partial(collate, size_divisible=cfg.input.size_divisible,
                                     pad_to=min_batch_shape(cfg.input)),
        num_workers=workers,
        pin_memory=info.device.type == "cuda",  # page-locked batches: the host-to-device copies run asynchronously
        persistent_workers=False)


def build_train_data(cfg: Config, data_dir: str | Path, strict: bool, log):
    from mrcnn.data.layout import open_split
    from mrcnn.data.transforms import GlobalBatchSampler, TrainDataset, TrainTransform

    base = open_split(data_dir, "train", strict=strict, logger=log)
    if len(base) == 0:
        raise MrcnnError(f"{data_dir}: no usable training images")
    tfm = TrainTransform(cfg.input.min_size, cfg.input.max_size, cfg.input.hflip_prob, cfg.input.train_min_sizes)
    ds = TrainDataset(base, tfm, seed=cfg.seed)
    return base, ds, GlobalBatchSampler


# -- the loop -------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out_dir: Path
    iteration: int
    checkpoint: Path
    metrics: dict
    skipped_steps: int


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _to_device(batch: dict, device: torch.device, channels_last: bool):
    images = batch["images"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = []
    for t in batch["targets"]:
        targets.append({k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()})
    return images, batch["image_sizes"].to(device, non_blocking=True), targets


def train(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    weights: str | Path | None = None,
    device: str | None = None,
    strict: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    evaluate_at_end: bool = True,
) -> TrainResult:
    from mrcnn.model import build_model
    from mrcnn.model.predictor import Predictor

    cfg.validate()  # (again: the CLI's options and callers' edits came after get_config's check)
    info = init_distributed(device)
    s = cfg.solver
    best_key = _best_metric_key(s.best_metric)
    workers = loader_workers(s.num_workers, info)
    out_dir = Path(out_dir)
    say = log if info.is_main else (lambda _m: None)
    old_run = _check_run_folder(out_dir, resume, overwrite)

    # 1. data: the class list comes from the dataset and fixes the model's head size
    base, train_ds, Sampler = build_train_data(cfg, data_dir, strict, say)
    cfg.model.num_classes = len(base.class_names) + 1
    names = base.class_names
    say(f"data: {len(base)} training images, {len(names)} classes ({', '.join(names[:8])}"
        f"{', ...' if len(names) > 8 else ''})")
    val_ds, val_cat_ids = _open_val(data_dir, names, strict, say) if evaluate_at_end or s.eval_period \
        else (None, [])
    global_batch = s.batch * s.accum * info.world
    if s.epochs > 0:
        s.max_iter = max(1, math.ceil(s.epochs * len(train_ds) / global_batch))
        say(f"{s.epochs:g} epochs of {len(train_ds)} images at a global batch of {global_batch}: "
            f"{s.max_iter} iterations")
    # (batches padded to max_size x max_size gain nothing from grouping: their sampling stays as it was)
    groups = base.aspect_groups() if cfg.input.aspect_ratio_grouping and not cfg.input.pad_to_max else None
    sampler = Sampler(len(train_ds), global_batch, seed=cfg.seed, groups=groups)
    if sampler.groups is not None and global_batch > 1:
        say(f"aspect-ratio grouping: {groups.count(0)} landscape, {groups.count(1)} portrait or square images")

    # 2. model, optimizer, scaler
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    n_all = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {cfg.name}, {n_all / 1e6:.1f} M parameters ({n_trained / 1e6:.1f} M trained)")
    init = _initial_weights(model, cfg, weights, base.class_names, resume, say)
    model = model.to(info.device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if s.compile:
        model.compile_backbone()
        say("--compile: the backbone + FPN compile in the first step of each new input shape (slow steps)")
    optimizer = make_optimizer(model, cfg, info.world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    scaler = torch.amp.GradScaler(info.device.type, init_scale=s.fp16_init_scale, enabled=s.amp == "fp16")

    # 3. resume
    start_iter = 0
    last_path = out_dir / "last.pt"
    best: dict = {}  # {"metric", "value", "iter"} of the best evaluation so far
    if resume:
        if not last_path.exists():
            raise MrcnnError(f"--resume: no checkpoint at {last_path}")
        ck = load_checkpoint(last_path)
        if Config.from_dict(ck["config"]).model != cfg.model:
            raise MrcnnError(f"--resume: {last_path} was trained with a different model config")
        if list(ck.get("class_names") or names) != names:
            raise MrcnnError(f"--resume: {last_path} was trained on the classes {', '.join(ck['class_names'][:6])}"
                             f"{', ...' if len(ck['class_names']) > 6 else ''}; {data_dir} has "
                             f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
        # with an EMA, "model" holds the averaged weights and "ema" the online ones the optimizer steps
        model.load_state_dict(ck["ema"]["online"] if ck.get("ema") else ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck.get("rng", {}))
        start_iter = int(ck["iteration"])
        init = ck.get("init") or {}
        best = ck.get("best") or {}
        say(f"resumed from {last_path} at iteration {start_iter}")
    ema = ModelEMA(model, s.ema_decay, s.ema_tau) if s.ema_decay > 0 else None  # (after every .to(): it keeps
    # references to the model's tensors)
    if resume and ck.get("ema") and ema is not None:
        ema.load(ck["model"], ck["ema"]["updates"])
    elif resume and ema is not None and start_iter > 0:
        say(f"solver.ema_decay={s.ema_decay:g}: {last_path} has no weight average; it starts at iteration {start_iter}")
    elif resume and ck.get("ema"):
        say("solver.ema_decay=0: the run continues without its weight average, from the weights the optimizer steps")

    ddp_model = model
    if info.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True)

    if info.is_main:
        for old in old_run:  # --overwrite: the old run's files, not the folder's other contents
            old.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
        atomic_write(out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))
    metrics_path = out_dir / "metrics.jsonl"
    if info.is_main:
        _keep_metrics_until(metrics_path, start_iter)
    metrics_file = open(metrics_path, "a") if info.is_main else None
    if init and start_iter == 0 and metrics_file is not None:
        metrics_file.write(json.dumps({"iter": 0, "init": init}) + "\n")

    def checkpoint(it: int, final: bool = False) -> Path:
        payload = {"config": cfg.to_dict(), "class_names": base.class_names,
                   "model": ema.state_dict() if ema is not None else model.state_dict(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "iteration": it,
                   "rng": _rng_state(), "init": init, "best": best, "data": str(Path(data_dir).resolve())}
        if ema is not None:
            payload["ema"] = {"decay": ema.decay, "tau": ema.tau, "updates": ema.updates, "online": model.state_dict()}
        if info.is_main:
            save_checkpoint(last_path, payload)
            if final:
                save_checkpoint(out_dir / "model_final.pt", payload)
        return out_dir / ("model_final.pt" if final else "last.pt")

    def run_eval(it: int) -> dict:
        if val_ds is None:
            return {}
        with ema.applied() if ema is not None else contextlib.nullcontext():  # the averaged weights, if any
            model.eval()
            with _compile_errors(s.compile):
                # every rank predicts its share of the images; rank 0 runs COCOeval, every rank gets the metrics
                metrics, _ = evaluate(Predictor(model, cfg.input), val_ds, batch_size=max(s.batch, 1), log=say,
                                      progress=progress and info.is_main, distributed=info.world > 1,
                                      max_images=s.eval_max_images, cat_ids=val_cat_ids)
            model.train()
            say(f"iteration {it} COCO AP{' (weight average)' if ema is not None else ''}\n" + format_table(metrics))
            _write_metrics({"iter": it, "eval": metrics})
            keep_if_best(it, metrics)
        return metrics

    def keep_if_best(it: int, metrics: dict) -> None:
        """model_best.pt: the weights of the evaluation with the highest `solver.best_metric` (first on ties)."""
        nonlocal best
        if best_key is None or best_key[0] not in metrics:
            return
        value = float(metrics[best_key[0]][best_key[1]])
        if best and value <= best["value"]:
            return
        best = {"metric": s.best_metric, "value": value, "iter": it}  # on every rank: their last.pt payloads agree
        if not info.is_main:
            return
        save_checkpoint(out_dir / "model_best.pt", {"config": cfg.to_dict(), "class_names": base.class_names,
                                                     "model": model.state_dict(), "iteration": it, "best": best,
                                                     "init": init})
        say(f"model_best.pt: {s.best_metric} {value:.4f} at iteration {it}")

    def _write_metrics(row: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    # 4. loop
    model.train()
    bad_in_a_row = skipped = 0
    last_metrics: dict = {}
    saved_at = start_iter  # the iteration last.pt holds
    stop = StopOnSignal()

    def stop_run(done: int) -> None:
        """A stop was requested (SIGINT / SIGTERM, on any rank): last.pt at iteration `done`, then
        TrainingStopped (the CLI's exit status: 128 + the signal's number)."""
        if done > saved_at:
            checkpoint(done)
        name = stop.name or "a signal to another rank"
        _write_metrics({"iter": done, "stopped": name})
        if metrics_file:
            metrics_file.close()
        if info.owns_group:
            _barrier(info)
            dist.destroy_process_group()
        raise TrainingStopped(f"stopped by {name} after iteration {done}: last.pt saved; continue with "
                              f"`mrcnn train --resume --out {out_dir}`", stop.requested or int(signal.SIGTERM))

    with stop, reporter(s.max_iter, "train", log=say, enabled=progress and info.is_main,
                        every=max(1, s.max_iter // 50)) as rep:
        # (workers forked after the handlers are set ignore a terminal's Ctrl-C: the trainer stops them)
        data_iter = iter(make_train_loader(train_ds, sampler, cfg, info, start_iter, workers))
        rep.update(start_iter)
        budget = TimeBudget(s.max_minutes * 60.0, start_iter, s.max_iter)
        for it in range(start_iter, s.max_iter):
            if it >= s.max_iter:  # a time budget shortened the run (the loader's batches beyond it go unused)
                break
            t0 = clock()
            optimizer.zero_grad(set_to_none=True)
            sums = {k: 0.0 for k in LOSS_KEYS}
            finite = True
            data_time = 0.0  # waiting for the loader and the host-to-device copies (detectron2's data_time)
            for micro in range(s.accum):
                t_data = clock()
                try:
                    batch = next(data_iter)
                except Exception:
                    if stop.requested is None:
                        raise
                    # the signal also reached the loader workers (a scheduler signals the whole job): the
                    # iterations done so far are whole, so stop at the last one
                    stop_run(it)
                if batch["bad_files"]:  # found by a loader worker: counted here for the end-of-run report
                    base.note_bad_files(batch["bad_files"])
                images, sizes, targets = _to_device(batch, info.device, s.channels_last)
                data_time += clock() - t_data
                sync = micro == s.accum - 1 or info.world == 1
                ctx = ddp_model.no_sync() if (not sync and info.world > 1) else contextlib.nullcontext()
                with ctx, _compile_errors(s.compile):
                    with _autocast(info.device, s.amp):
                        losses = ddp_model(images, sizes, targets)
                    loss = sum(losses[k].float() for k in LOSS_KEYS) / s.accum
                    scaler.scale(loss).backward()
                # one device->host transfer per micro-step for the logged terms and the finiteness check
                values = torch.stack([losses[k].detach().float() for k in LOSS_KEYS]).tolist()
                finite = finite and all(math.isfinite(v) for v in values)
                for k, v in zip(LOSS_KEYS, values):
                    sums[k] += v / s.accum
            finite, stop_now = _agree(finite, stop.requested is not None, info)
            stepped = False
            grad_norm = None
            if finite:
                if s.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    # the norm before clipping, logged (one more small device-to-host copy, only when clipping)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
                scale_before = scaler.get_scale() if scaler.is_enabled() else None
                scaler.step(optimizer)
                scaler.update()
                stepped = scale_before is None or scaler.get_scale() >= scale_before
                if stepped and ema is not None:
                    ema.update()
            if not stepped:
                optimizer.zero_grad(set_to_none=True)
                if scaler.is_enabled() and not finite:
                    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                skipped += 1
                bad_in_a_row += 1
            else:
                bad_in_a_row = 0
            scheduler.step()
            dt = clock() - t0
            total = sum(sums.values())
            row = {"iter": it + 1, "lr": optimizer.param_groups[0]["lr"], "loss": total, **sums,
                   "img_s": global_batch / dt, "time": dt, "data_time": data_time, "skipped": not stepped}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if info.device.type == "cuda":  # the peak since the start, as detectron2's max_mem
                row["max_mem_mb"] = torch.cuda.max_memory_allocated(info.device) / 2 ** 20
            _write_metrics(row)
            if bad_in_a_row >= s.max_bad_steps:
                if metrics_file:
                    metrics_file.close()
                raise MrcnnError(
                    f"non-finite loss in {bad_in_a_row} consecutive steps (iteration {it + 1}); stopped. "
                    f"Last good checkpoint: {last_path if last_path.exists() else 'none'}")
            mem = f" {row['max_mem_mb'] / 1024:.1f}G" if "max_mem_mb" in row else ""
            rep.update(it + 1, f"loss {total:.3f} {global_batch / dt:.1f} img/s{mem}")
            done = it + 1
            fits = budget.iterations_that_fit(done, s.max_iter, info)
            if fits is not None and fits < s.max_iter:
                if budget.planned == budget.end:  # said once; the end is re-estimated every 2% of the run
                    say(f"time budget {s.max_minutes:g} min: {fits} of {s.max_iter} iterations fit at "
                        f"{budget.pace(done):.2f} s per iteration; the LR steps move with the end")
                s.max_iter = budget.end = fits
                rep.set_total(fits)
            if s.checkpoint_period and done % s.checkpoint_period == 0 and done < s.max_iter:
                checkpoint(done)
                saved_at = done
            if stop_now and done < s.max_iter:  # (at max_iter the run ends as usual: model_final.pt is written)
                stop_run(done)
            if s.eval_period and done % s.eval_period == 0 and done < s.max_iter:
                last_metrics = run_eval(done) or last_metrics
                _barrier(info)
    done = max(s.max_iter, start_iter)  # the loop either ran to max_iter or raised
    if budget.end < budget.planned:
        say(f"time budget {s.max_minutes:g} min: the run ended at iteration {done} of {budget.planned} planned")
    # 5. cross-rank consistency check, final checkpoint, final eval
    max_diff = _ddp_param_max_diff(model, info)
    if max_diff is not None:
        _write_metrics({"iter": done, "ddp_param_max_diff": max_diff})
    path = checkpoint(done, final=True)
    if evaluate_at_end:
        last_metrics = run_eval(done) or last_metrics
    _barrier(info)
    if skipped:
        say(f"skipped {skipped} non-finite step(s)")
    if info.world > 1:  # each rank read its own share of the images: the report counts what any rank found
        found = [None] * info.world
        dist.all_gather_object(found, base.bad_files())
        for f in found:
            base.note_bad_files(f)
    report = base.report() if hasattr(base, "report") else ""
    if report:
        say(report)
    if metrics_file:
        metrics_file.close()
    if info.owns_group:  # an undestroyed gloo group can abort the interpreter's exit ("terminate called ...")
        _barrier(info)
        dist.destroy_process_group()
    return TrainResult(out_dir, done, path, last_metrics, skipped)


class TimeBudget:
    """`solver.max_minutes`: from the pace so far (evaluations included), how many iterations fit in the budget.
    Asked at every 2% of the run (from the 10th iteration on, past the slow first steps); the answer only ever
    shortens the run, and with no budget, or one that fits the run, it is None (the run is what it would be)."""

    def __init__(self, seconds: float, start_iter: int, max_iter: int) -> None:
        self.seconds, self.start = seconds, start_iter
        self.planned = self.end = max_iter
        self.every = max(1, (max_iter - start_iter) // 50)
        self.t0 = clock()

    def pace(self, done: int) -> float:
        return (clock() - self.t0) / max(done - self.start, 1)

    def iterations_that_fit(self, done: int, max_iter: int, info: DistInfo | None = None) -> int | None:
        if self.seconds <= 0 or done - self.start < 10 or (done - self.start) % self.every:
            return None
        left = self.seconds - (clock() - self.t0)
        fits = done + max(0, int(left / self.pace(done)))
        if info is not None and info.world > 1:  # every rank ends where rank 0's clock says
            box = [fits]
            dist.broadcast_object_list(box, src=0)
            fits = int(box[0])
        return fits if fits < max_iter else None


def _open_val(data_dir, class_names: list[str], strict: bool, say):
    """(the val split that training evaluates on, the category id of each training class in it), or (None, [])
    where there is none or it has no images (said once). Its classes must be the training split's, matched by name;
    checked here, before the run starts, not at its first evaluation hours later."""
    from mrcnn.data.layout import open_split
    from mrcnn.engine.evaluation import match_classes

    val = open_split(data_dir, "val", required=False, strict=strict, logger=say)
    if val is None or len(val) == 0:
        say(f"{'no validation split' if val is None else 'a validation split without images'} in {data_dir}: "
            "no COCO evaluation")
        return None, []
    return val, match_classes(class_names, val, "the training split", say)


RUN_FILES = ("last.pt", "model_final.pt", "model_best.pt", "metrics.jsonl")


def _best_metric_key(name: str) -> tuple[str, str] | None:
    """`solver.best_metric` "segm.AP" -> ("segm", "AP"); "" -> None."""
    from mrcnn.engine.evaluation import STAT_NAMES

    if not name:
        return None
    iou_type, _, stat = name.partition(".")
    if iou_type not in ("bbox", "segm") or stat not in STAT_NAMES:
        raise MrcnnError(f"solver.best_metric must be bbox.STAT or segm.STAT with STAT one of "
                         f"{', '.join(STAT_NAMES)} (or empty: off), got {name!r}")
    return iou_type, stat


def _check_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """A new run never lands on an old one's checkpoints and metrics unless asked to (`--overwrite`); returns the
    old run's files to remove once the new run is set up (so a failing start leaves them as they were)."""
    if resume and overwrite:
        raise MrcnnError("--resume continues the run in --out, --overwrite starts it over: choose one")
    if resume or not out_dir.is_dir():
        return []
    held = [out_dir / n for n in RUN_FILES if (out_dir / n).exists()]
    if held and not overwrite:
        raise MrcnnError(f"{out_dir} already holds a training run ({', '.join(p.name for p in held)}); --resume "
                         "continues it, --overwrite starts over in it, or choose another --out")
    return held


def _keep_metrics_until(path: Path, iteration: int) -> None:
    """On resume, drop the metrics rows a killed run wrote after its last checkpoint (they are computed again), so
    that every iteration has one row. Rewritten atomically."""
    if iteration == 0 or not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line).get("iter", 0)) <= iteration:
                keep.append(line)
        except (ValueError, AttributeError, TypeError):
            continue  # a line the kill cut short
    if len(keep) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{k}\n" for k in keep)))


def _initial_weights(model, cfg: Config, weights, class_names: list[str], resume: bool, say) -> dict:
    """`--weights`: load the file into the fresh model (not when resuming: the run's own checkpoint wins). Without
    it, a config that freezes BN and lower stages is told that those stay random."""
    from mrcnn.model.weights import load_initial_weights

    if resume:
        if weights is not None:
            say(f"--resume: continuing from the run's own checkpoint; --weights {weights} is not used")
        return {}
    if weights is not None:
        report = load_initial_weights(model, weights, class_names)
        say(report.describe())
        return report.to_dict()
    m = cfg.model
    frozen = (["its BatchNorm is frozen"] if m.norm == "frozen_bn" else []) + \
        ([f"{5 - m.trainable_layers} of 5 backbone stages do not train"] if m.trainable_layers < 5 else [])
    if frozen:
        say(f"warning: {cfg.name} starts from random weights, yet {' and '.join(frozen)}; pass --weights (an "
            "ImageNet ResNet such as torchvision's resnet50-0676ba61.pth, or Mask R-CNN weights), or train "
            "everything from scratch with --set model.norm=gn --set model.trainable_layers=5")
    return {}


@contextlib.contextmanager
def _compile_errors(enabled: bool):
    """With --compile, a failure of torch.compile (no Triton, no working C++ compiler, ...) is one error line."""
    try:
        yield
    except Exception as e:
        if enabled and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise MrcnnError(f"--compile: compiling the backbone failed ({first}); train without --compile") from e
        raise


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def _ddp_param_max_diff(model: torch.nn.Module, info: DistInfo) -> float | None:
    """Max |param_rank - param_rank0| over all ranks (None when not distributed)."""
    if info.world == 1:
        return None
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    d = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(d, op=dist.ReduceOp.MAX)
    return float(d.item())
