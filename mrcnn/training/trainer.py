"""The training loop: AMP (bf16 | fp16 | off), DDP (torchrun; nccl on GPU, gloo on CPU), gradient accumulation,
channels-last, atomic checkpoints with exact resume, periodic COCO evaluation, metrics.jsonl.

    Trainer(cfg, data_dir, out_dir, ...)   builds the data, model, optimizer and hooks (resuming from last.pt)
    Trainer.train() -> TrainResult          runs the loop: run_step() per iteration, then each hook's after_step
    train(cfg, data_dir, out_dir, ...)      both at once (what `mrcnn train` calls)

Determinism by construction: the global batch of iteration `it` is a pure function of (seed, it), each sample's
augmentation and fg/bg sampling seeds are pure functions of (seed, epoch, index), and losses are per-image means
averaged over images. Hence batch B x accum 2, DDP over 2 ranks, and one process with batch 2B see the same
samples and compute the same gradient, and a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mrcnn.config import Config
from mrcnn.errors import MrcnnError
from mrcnn.evaluation import coco
from mrcnn.io import atomic_write, check_writable_dir
from mrcnn.model import build_model
from mrcnn.model.checkpoint import load_checkpoint, save_checkpoint
from mrcnn.model.predictor import Predictor
from mrcnn.model.weights import check_weights_file, initial_weights
from mrcnn.progress import reporter
from mrcnn.training import hooks as H
from mrcnn.training.data import build_train_data, loader_workers, make_train_loader, open_val, to_device
from mrcnn.training.distributed import agree, barrier, ddp_param_max_diff, init_distributed, leave
from mrcnn.training.ema import ModelEMA
from mrcnn.training.hook_base import HookBase
from mrcnn.training.runs import check_run_folder
from mrcnn.training.schedule import lr_factor, make_optimizer
from mrcnn.training.signals import StopOnSignal, TrainingStopped
from mrcnn.training.storage import MetricsStorage

clock = time.perf_counter  # the loop's timings (metrics rows, the time budget); a test can run them on a fake clock

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


@dataclass
class TrainResult:
    out_dir: Path
    iteration: int
    checkpoint: Path
    metrics: dict
    skipped_steps: int


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Trainer:
    """One training run. Its state (model, optimizer, scheduler, scaler, weight average, iteration, best evaluation)
    is what last.pt holds; its hooks (`self.hooks`, hooks.py) do the jobs around each step, through the public
    methods below (save_checkpoint, last_checkpoint, save_best, evaluate, end_at, say) and `storage`."""

    def __init__(
        self,
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
    ) -> None:
        cfg.validate()  # (again: the CLI's options and callers' edits came after get_config's check)
        self.cfg, self.s = cfg, cfg.solver
        self.data_dir, self.out_dir, self.progress, self.strict = data_dir, Path(out_dir), progress, strict
        self.info = init_distributed(device)
        self.say = log if self.info.is_main else (lambda _m: None)
        # (a bad solver.best_metric is one line before anything)
        self.hooks = self.register_hooks(self.default_hooks(evaluate_at_end))
        self.storage = MetricsStorage(self.out_dir / "metrics.jsonl", self.info.is_main)
        self.last_path = self.out_dir / "last.pt"
        self.final_path: Path | None = None  # model_final.pt, once written
        self.workers = loader_workers(self.s.num_workers, self.info)
        if weights is not None and not resume:
            check_weights_file(weights)
        old_run = check_run_folder(self.out_dir, resume, overwrite)
        if self.info.is_main:
            check_writable_dir(self.out_dir, "--out")
        self.iter = self.start_iter = self.saved_at = 0  # saved_at: the iteration last.pt holds
        self.best: dict = {}  # {"metric", "value", "iter"} of the best evaluation so far (save_best)
        self.init: dict = {}  # what --weights loaded (the fine-tuning report)
        self.last_metrics: dict = {}
        self.skipped = self.bad_in_a_row = 0
        self.stop, self.stop_now = StopOnSignal(), False
        self.rep = None
        self.build_data(evaluate_at_end)
        self.max_iter = self.s.max_iter  # the loop's bound (end_at lowers it)
        self.build_model(weights, resume)
        last = self.resume_from(self.last_path) if resume else None
        # the weight average starts from the (resumed) online weights, after every .to(): it keeps references to
        # the model's tensors
        self.ema = ModelEMA(self.model, self.s.ema_decay, self.s.ema_tau) if self.s.ema_decay > 0 else None
        if last is not None:
            self.resume_average(last, self.last_path)
        self.wrap_ddp()
        self.prepare_run_folder(old_run)

    # -- set-up ----------------------------------------------------------------------------------------------------
    def default_hooks(self, evaluate_at_end: bool) -> list[HookBase]:
        s = self.s
        return [
            H.NonFiniteGuard(s.max_bad_steps),
            H.TimeBudgetHook(s.max_minutes),
            H.PeriodicCheckpointer(s.checkpoint_period),
            H.PeriodicEvaluator(s.eval_period, evaluate_at_end),
            H.BestModel(s.best_metric),
        ]

    def register_hooks(self, hooks: list[HookBase]) -> list[HookBase]:
        """Each hook holds a weak proxy of the trainer (no reference cycle keeps a finished run alive)."""
        for h in hooks:
            h.trainer = weakref.proxy(self)
        return hooks

    def build_data(self, evaluate_at_end: bool) -> None:
        """The class list comes from the dataset and fixes the model's head size."""
        cfg, s, say = self.cfg, self.s, self.say
        self.base, self.train_ds, sampler_cls = build_train_data(cfg, self.data_dir, self.strict, say)
        self.names = self.base.class_names
        cfg.model.num_classes = len(self.names) + 1
        say(
            f"data: {len(self.base)} training images, {len(self.names)} classes ({', '.join(self.names[:8])}"
            f"{', ...' if len(self.names) > 8 else ''})"
        )
        self.val_ds, self.val_cat_ids = (
            open_val(self.data_dir, self.names, self.strict, say) if evaluate_at_end or s.eval_period else (None, [])
        )
        self.global_batch = s.batch * s.accum * self.info.world
        if s.epochs > 0:
            s.max_iter = max(1, math.ceil(s.epochs * len(self.train_ds) / self.global_batch))
            say(
                f"{s.epochs:g} epochs of {len(self.train_ds)} images at a global batch of {self.global_batch}: "
                f"{s.max_iter} iterations"
            )
        # (batches padded to max_size x max_size gain nothing from grouping: their sampling stays as it was)
        groups = self.base.aspect_groups() if cfg.input.aspect_ratio_grouping and not cfg.input.pad_to_max else None
        self.sampler = sampler_cls(len(self.train_ds), self.global_batch, seed=cfg.seed, groups=groups)
        if self.sampler.groups is not None and self.global_batch > 1:
            say(f"aspect-ratio grouping: {groups.count(0)} landscape, {groups.count(1)} portrait or square images")

    def build_model(self, weights, resume: bool) -> None:
        """Model, optimizer, LR scheduler and gradient scaler."""
        cfg, s, info = self.cfg, self.s, self.info
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
        n_all = sum(p.numel() for p in model.parameters())
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.say(f"model: {cfg.name}, {n_all / 1e6:.1f} M parameters ({n_trained / 1e6:.1f} M trained)")
        self.init = initial_weights(model, cfg, weights, self.names, resume, self.say)
        model = model.to(info.device)
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if s.compile:
            model.compile_backbone()
            self.say("--compile: the backbone + FPN compile in the first step of each new input shape (slow steps)")
        self.model = model
        self.optimizer = make_optimizer(model, cfg, info.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(it, cfg))
        self.scaler = torch.amp.GradScaler(info.device.type, init_scale=s.fp16_init_scale, enabled=s.amp == "fp16")

    def resume_from(self, last_path: Path) -> dict:
        """--resume: the run's state from its last.pt, which must be of the same model and classes; returns it."""
        if not last_path.exists():
            raise MrcnnError(f"--resume: no checkpoint at {last_path}")
        ck = load_checkpoint(last_path)
        names = self.names
        if Config.from_dict(ck["config"]).model != self.cfg.model:
            raise MrcnnError(f"--resume: {last_path} was trained with a different model config")
        if list(ck.get("class_names") or names) != names:
            raise MrcnnError(
                f"--resume: {last_path} was trained on the classes {', '.join(ck['class_names'][:6])}"
                f"{', ...' if len(ck['class_names']) > 6 else ''}; {self.data_dir} has "
                f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
            )
        # with a weight average, "model" holds the averaged weights and "ema" the online ones the optimizer steps
        self.model.load_state_dict(ck["ema"]["online"] if ck.get("ema") else ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck.get("rng", {}))
        self.iter = self.start_iter = self.saved_at = int(ck["iteration"])
        self.init = ck.get("init") or {}
        self.best = ck.get("best") or {}
        self.say(f"resumed from {last_path} at iteration {self.start_iter}")
        return ck

    def resume_average(self, ck: dict, last_path: Path) -> None:
        if ck.get("ema") and self.ema is not None:
            self.ema.load(ck["model"], ck["ema"]["updates"])
        elif self.ema is not None and self.start_iter > 0:
            self.say(
                f"solver.ema_decay={self.s.ema_decay:g}: {last_path} has no weight average; it starts at "
                f"iteration {self.start_iter}"
            )
        elif ck.get("ema"):
            self.say(
                "solver.ema_decay=0: the run continues without its weight average, from the weights the optimizer steps"
            )

    def wrap_ddp(self) -> None:
        self.ddp_model = self.model
        if self.info.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.info.device.index] if self.info.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def prepare_run_folder(self, old_run: list[Path]) -> None:
        if not self.info.is_main:
            return
        for old in old_run:  # --overwrite: the old run's files, not the folder's other contents
            old.unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True)
        atomic_write(self.out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))

    def checkpoint_payload(self, it: int) -> dict:
        payload = {
            "config": self.cfg.to_dict(),
            "class_names": self.names,
            "model": self.ema.state_dict() if self.ema is not None else self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "iteration": it,
            "rng": rng_state(),
            "init": self.init,
            "best": self.best,
            "data": str(Path(self.data_dir).resolve()),
        }
        if self.ema is not None:
            payload["ema"] = {
                "decay": self.ema.decay,
                "tau": self.ema.tau,
                "updates": self.ema.updates,
                "online": self.model.state_dict(),
            }
        return payload

    # -- what the hooks call -------------------------------------------------------------------------------------
    def clock(self) -> float:
        return clock()

    def end_at(self, iteration: int) -> None:
        """Shorten the run to end after `iteration` (the time budget): the loop's bound, the LR schedule's
        (solver.max_iter, which last.pt records) and the progress bar's."""
        self.max_iter = self.s.max_iter = iteration
        self.rep.set_total(iteration)

    def save_checkpoint(self, it: int | None = None, final: bool = False) -> Path:
        """last.pt (written atomically) at iteration `it` (default: now), with `final` model_final.pt too (rank 0
        writes; every rank builds the same payload). Returns the file."""
        it = self.iter if it is None else it
        payload = self.checkpoint_payload(it)
        if self.info.is_main:
            save_checkpoint(self.last_path, payload)
            if final:
                save_checkpoint(self.out_dir / "model_final.pt", payload)
        self.saved_at = it
        if final:
            self.final_path = self.out_dir / "model_final.pt"
        return self.final_path if final else self.last_path

    def last_checkpoint(self) -> Path | None:
        return self.last_path if self.last_path.exists() else None

    def save_best(self, metric: str, value: float, it: int) -> None:
        """model_best.pt: the weights (no optimizer state) evaluated at iteration `it`, the best by `metric` so far."""
        self.best = {"metric": metric, "value": value, "iter": it}
        if not self.info.is_main:
            return
        payload = {
            "config": self.cfg.to_dict(),
            "class_names": self.names,
            "model": self.model.state_dict(),
            "iteration": it,
            "best": self.best,
            "init": self.init,
        }
        save_checkpoint(self.out_dir / "model_best.pt", payload)
        self.say(f"model_best.pt: {metric} {value:.4f} at iteration {it}")

    def evaluate(self, it: int) -> dict:
        """COCO evaluation on the val split (with the weight average, if any), its row in the metrics, then each
        hook's after_eval. Every rank predicts its share of the images, rank 0 runs COCOeval, every rank gets the
        metrics."""
        if self.val_ds is None:
            return {}
        s = self.s
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():  # the averaged weights
            self.model.eval()
            with self.compile_errors():
                metrics, _ = coco.evaluate(
                    Predictor(self.model, self.cfg.input),
                    self.val_ds,
                    batch_size=max(s.batch, 1),
                    log=self.say,
                    progress=self.progress and self.info.is_main,
                    distributed=self.info.world > 1,
                    max_images=s.eval_max_images,
                    cat_ids=self.val_cat_ids,
                )
            self.model.train()
            self.say(
                f"iteration {it} COCO AP{' (weight average)' if self.ema is not None else ''}\n"
                + coco.format_table(metrics)
            )
            self.storage.put({"iter": it, "eval": metrics})
            for h in self.hooks:
                h.after_eval(it, metrics)
        self.last_metrics = metrics
        return metrics

    # -- the loop --------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        info = self.info
        with self.storage.opened(self.start_iter):
            if self.init and self.start_iter == 0:
                self.storage.put({"iter": 0, "init": self.init})
            for h in self.hooks:
                h.before_train()
            self.model.train()
            with (
                self.stop,
                reporter(
                    self.max_iter,
                    "train",
                    log=self.say,
                    enabled=self.progress and info.is_main,
                    every=max(1, self.max_iter // 50),
                ) as self.rep,
            ):
                # (workers forked after the handlers are set ignore a terminal's Ctrl-C: the trainer stops them;
                # when a time budget shortens the run, the loader's batches beyond its end go unused)
                data_iter = iter(
                    make_train_loader(self.train_ds, self.sampler, self.cfg, info, self.start_iter, self.workers)
                )
                self.rep.update(self.start_iter)
                while self.iter < self.max_iter:
                    row = self.run_step(self.iter, data_iter)
                    self.iter += 1
                    self.storage.put_step(row)
                    mem = f" {row['max_mem_mb'] / 1024:.1f}G" if "max_mem_mb" in row else ""
                    self.rep.update(self.iter, f"loss {row['loss']:.3f} {row['img_s']:.1f} img/s{mem}")
                    if self.stop_now and self.iter < self.max_iter:  # (at the end the run finishes as usual)
                        self.stop_run(self.iter)
                    for h in self.hooks:
                        h.after_step()
            return self.finish()

    def finish(self) -> TrainResult:
        """After the last iteration: the cross-rank consistency check, the hooks' last work (final checkpoint, final
        evaluation), the reports of skipped steps and bad data."""
        info, base = self.info, self.base
        max_diff = ddp_param_max_diff(self.model, info)
        if max_diff is not None:
            self.storage.put({"iter": self.iter, "ddp_param_max_diff": max_diff})
        for h in self.hooks:
            h.after_train()
        barrier(info)
        if self.skipped:
            self.say(f"skipped {self.skipped} non-finite step(s)")
        if info.world > 1:  # each rank read its own share of the images: the report counts what any rank found
            found = [None] * info.world
            dist.all_gather_object(found, base.bad_files())
            for f in found:
                base.note_bad_files(f)
        report = base.report() if hasattr(base, "report") else ""
        if report:
            self.say(report)
        self.leave_process_group()
        return TrainResult(self.out_dir, self.iter, self.final_path, self.last_metrics, self.skipped)

    def leave_process_group(self) -> None:
        """Drop the DDP wrapper (its reducer holds the process group: destroyed at interpreter exit instead, gloo's
        threads can abort it, "terminate called without an active exception"), then leave the group."""
        self.ddp_model = self.model
        gc.collect()
        leave(self.info)

    def run_step(self, it: int, data_iter) -> dict:
        """One optimizer step over `solver.accum` micro-batches (skipped when a loss is not finite on some rank);
        returns the iteration's metrics row."""
        t0 = clock()
        self.optimizer.zero_grad(set_to_none=True)
        sums, finite, data_time = self.forward_backward(it, data_iter)
        finite, self.stop_now = agree(finite, self.stop.requested is not None, self.info)
        stepped, grad_norm = self.optimizer_step(finite)
        if not stepped:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled() and not finite:
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            self.skipped += 1
            self.bad_in_a_row += 1
        else:
            self.bad_in_a_row = 0
        self.scheduler.step()
        dt = clock() - t0
        row = {
            "iter": it + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": sum(sums.values()),
            **sums,
            "img_s": self.global_batch / dt,
            "time": dt,
            "data_time": data_time,
            "skipped": not stepped,
        }
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        if self.info.device.type == "cuda":  # the peak since the start, as detectron2's max_mem
            row["max_mem_mb"] = torch.cuda.max_memory_allocated(self.info.device) / 2**20
        return row

    def forward_backward(self, it: int, data_iter) -> tuple[dict, bool, float]:
        """Losses and gradients of this rank's micro-batches: (the logged loss terms, all finite, seconds spent
        waiting for the loader and the host-to-device copies, as detectron2's data_time)."""
        s, info = self.s, self.info
        sums = {k: 0.0 for k in LOSS_KEYS}
        finite, data_time = True, 0.0
        for micro in range(s.accum):
            t_data = clock()
            try:
                batch = next(data_iter)
            except Exception:
                if self.stop.requested is None:
                    raise
                # the signal also reached the loader workers (a scheduler signals the whole job): the iterations
                # done so far are whole, so stop at the last one
                self.stop_run(it)
            if batch["bad_files"]:  # found by a loader worker: counted here for the end-of-run report
                self.base.note_bad_files(batch["bad_files"])
            images, sizes, targets = to_device(batch, info.device, s.channels_last)
            data_time += clock() - t_data
            sync = micro == s.accum - 1 or info.world == 1
            ctx = self.ddp_model.no_sync() if (not sync and info.world > 1) else contextlib.nullcontext()
            with ctx, self.compile_errors():
                with autocast(info.device, s.amp):
                    losses = self.ddp_model(images, sizes, targets)
                loss = sum(losses[k].float() for k in LOSS_KEYS) / s.accum
                self.scaler.scale(loss).backward()
            # one device->host transfer per micro-step for the logged terms and the finiteness check
            values = torch.stack([losses[k].detach().float() for k in LOSS_KEYS]).tolist()
            finite = finite and all(math.isfinite(v) for v in values)
            for k, v in zip(LOSS_KEYS, values, strict=True):
                sums[k] += v / s.accum
        return sums, finite, data_time

    def optimizer_step(self, finite: bool) -> tuple[bool, float | None]:
        """(whether the optimizer stepped, the gradient norm before clipping when clipping). fp16's scaler skips a
        step whose gradients overflowed (its scale drops)."""
        if not finite:
            return False, None
        s, scaler = self.s, self.scaler
        grad_norm = None
        if s.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            # the norm before clipping, logged (one more small device-to-host copy, only when clipping)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip))
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(self.optimizer)
        scaler.update()
        stepped = scale_before is None or scaler.get_scale() >= scale_before
        if stepped and self.ema is not None:
            self.ema.update()
        return stepped, grad_norm

    def stop_run(self, done: int) -> None:
        """A stop was requested (SIGINT / SIGTERM, on any rank): last.pt at iteration `done`, then TrainingStopped
        (the CLI's exit status: 128 + the signal's number)."""
        if done > self.saved_at:
            self.save_checkpoint(done)
        name = self.stop.name or "a signal to another rank"
        self.storage.put({"iter": done, "stopped": name})
        self.leave_process_group()
        raise TrainingStopped(
            f"stopped by {name} after iteration {done}: last.pt saved; continue with "
            f"`mrcnn train --resume --out {self.out_dir}`",
            self.stop.requested or int(signal.SIGTERM),
        )

    @contextlib.contextmanager
    def compile_errors(self):
        """With --compile, a failure of torch.compile (no Triton, no working C++ compiler, ...) is one error line."""
        try:
            yield
        except Exception as e:
            if self.s.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise MrcnnError(f"--compile: compiling the backbone failed ({first}); train without --compile") from e
            raise


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
    """`mrcnn train`: set up a Trainer, run it."""
    return Trainer(
        cfg,
        data_dir,
        out_dir,
        resume=resume,
        overwrite=overwrite,
        weights=weights,
        device=device,
        strict=strict,
        log=log,
        progress=progress,
        evaluate_at_end=evaluate_at_end,
    ).train()
