"""The Trainer's hooks, as detectron2's: each one does one job around the loop, in the order the Trainer holds them.

    before_train()          once, before the first iteration
    after_step()            after each iteration (trainer.iter: iterations done; trainer.row: its metrics)
    after_eval(it, metrics) after each COCO evaluation (inside it: the weight average, if any, is applied)
    after_train()           once, after the last iteration

    MetricsWriter        metrics.jsonl: one row per iteration, each evaluation, the fine-tuning report
    NonFiniteGuard       stops the run after solver.max_bad_steps non-finite steps in a row
    TimeBudgetHook       --max-minutes: shortens the run to what fits at its measured pace
    PeriodicCheckpointer last.pt every solver.checkpoint_period, model_final.pt at the end
    StopOnRequest        SIGINT / SIGTERM: last.pt at this iteration, then TrainingStopped
    PeriodicEvaluator    COCO evaluation every solver.eval_period and at the end
    BestModel            model_best.pt: the weights of the best evaluation by solver.best_metric
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mrcnn.errors import MrcnnError
from mrcnn.evaluation.coco import STAT_NAMES, evaluate, format_table
from mrcnn.io import strict_json
from mrcnn.model.checkpoint import save_checkpoint
from mrcnn.model.predictor import Predictor
from mrcnn.training.distributed import DistInfo, barrier
from mrcnn.training.runs import keep_metrics_until

if TYPE_CHECKING:
    from mrcnn.training.trainer import Trainer


class HookBase:
    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_eval(self, it: int, metrics: dict) -> None:
        pass

    def after_train(self) -> None:
        pass


class MetricsWriter(HookBase):
    """metrics.jsonl (rank 0 only): on --resume the rows a killed run wrote after its last checkpoint go first."""

    def __init__(self, path: Path, is_main: bool) -> None:
        self.path, self.is_main = path, is_main
        self.file = None

    def before_train(self) -> None:
        t = self.trainer
        if not self.is_main:
            return
        keep_metrics_until(self.path, t.start_iter)
        self.file = open(self.path, "a")
        if t.init and t.start_iter == 0:
            self.write({"iter": 0, "init": t.init})

    def write(self, row: dict) -> None:
        if self.file is not None:
            try:
                self.file.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
                self.file.flush()
            except OSError as e:  # a full disk mid-run: the file and the reason, not a traceback
                raise MrcnnError(f"{self.path}: could not be written ({e.strerror or e})") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def after_step(self) -> None:
        self.write(self.trainer.row)

    def after_eval(self, it: int, metrics: dict) -> None:
        self.write({"iter": it, "eval": metrics})


class NonFiniteGuard(HookBase):
    """A non-finite loss skips its step (the trainer); `max_bad` in a row end the run with one error line, keeping
    the last good checkpoint."""

    def __init__(self, max_bad: int) -> None:
        self.max_bad = max_bad

    def after_step(self) -> None:
        t = self.trainer
        if t.bad_in_a_row >= self.max_bad:
            t.metrics.close()
            last = t.checkpointer.last_path
            raise MrcnnError(f"non-finite loss in {t.bad_in_a_row} consecutive steps (iteration {t.iter}); stopped. "
                             f"Last good checkpoint: {last if last.exists() else 'none'}")

    def after_train(self) -> None:
        """A run whose weights ended non-finite is an error, not a model: model_final.pt is not written."""
        import torch

        t = self.trainer
        bad = [n for n, v in t.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            t.metrics.close()
            raise MrcnnError(f"the weights are not finite after iteration {t.iter} ({len(bad)} tensors, e.g. "
                             f"{bad[0]}); no model_final.pt was written (lower --lr, or clip gradients: "
                             "--set solver.grad_clip=10)")


class TimeBudget:
    """`solver.max_minutes`: from the pace so far (evaluations included), how many iterations fit in the budget.
    Asked at every 2% of the run (from the 10th iteration on, past the slow first steps); the answer only ever
    shortens the run, and with no budget, or one that fits the run, it is None (the run is what it would be)."""

    def __init__(self, seconds: float, start_iter: int, max_iter: int, clock) -> None:
        self.seconds, self.start, self.clock = seconds, start_iter, clock
        self.planned = self.end = max_iter
        self.every = max(1, (max_iter - start_iter) // 50)
        self.t0 = clock()

    def pace(self, done: int) -> float:
        return (self.clock() - self.t0) / max(done - self.start, 1)

    def iterations_that_fit(self, done: int, max_iter: int, info: DistInfo | None = None) -> int | None:
        if self.seconds <= 0 or done - self.start < 10 or (done - self.start) % self.every:
            return None
        left = self.seconds - (self.clock() - self.t0)
        fits = done + max(0, int(left / self.pace(done)))
        if info is not None and info.world > 1:  # every rank ends where rank 0's clock says
            import torch.distributed as dist

            box = [fits]
            dist.broadcast_object_list(box, src=0)
            fits = int(box[0])
        return fits if fits < max_iter else None


class TimeBudgetHook(HookBase):
    """--max-minutes, as Ultralytics' `time`: the run shortens itself to what fits; its LR steps (fractions of
    solver.max_iter) move with the new end."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.budget: TimeBudget | None = None

    def before_train(self) -> None:
        t = self.trainer
        self.budget = TimeBudget(self.minutes * 60.0, t.start_iter, t.s.max_iter, t.clock)

    def after_step(self) -> None:
        t, b = self.trainer, self.budget
        fits = b.iterations_that_fit(t.iter, t.s.max_iter, t.info)
        if fits is not None and fits < t.s.max_iter:
            if b.planned == b.end:  # said once; the end is re-estimated every 2% of the run
                t.say(f"time budget {self.minutes:g} min: {fits} of {t.s.max_iter} iterations fit at "
                      f"{b.pace(t.iter):.2f} s per iteration; the LR steps move with the end")
            t.s.max_iter = b.end = fits
            t.rep.set_total(fits)

    def after_train(self) -> None:
        b = self.budget
        if b is not None and b.end < b.planned:
            self.trainer.say(f"time budget {self.minutes:g} min: the run ended at iteration {self.trainer.iter} of "
                             f"{b.planned} planned")


class PeriodicCheckpointer(HookBase):
    """last.pt (written atomically) every `period` iterations and at the end, then model_final.pt (rank 0 writes;
    every rank builds the same payload)."""

    def __init__(self, out_dir: Path, period: int, is_main: bool) -> None:
        self.out_dir, self.period, self.is_main = out_dir, period, is_main
        self.last_path = out_dir / "last.pt"
        self.saved_at = 0  # the iteration last.pt holds
        self.final_path: Path | None = None

    def before_train(self) -> None:
        self.saved_at = self.trainer.start_iter

    def save(self, it: int, final: bool = False) -> Path:
        payload = self.trainer.checkpoint_payload(it)
        if self.is_main:
            save_checkpoint(self.last_path, payload)
            if final:
                save_checkpoint(self.out_dir / "model_final.pt", payload)
        self.saved_at = it
        return self.out_dir / ("model_final.pt" if final else "last.pt")

    def after_step(self) -> None:
        done, s = self.trainer.iter, self.trainer.s
        if self.period and done % self.period == 0 and done < s.max_iter:
            self.save(done)

    def after_train(self) -> None:
        self.final_path = self.save(self.trainer.iter, final=True)


class StopOnRequest(HookBase):
    """A SIGINT / SIGTERM on any rank (agreed on in the step's all-reduce) ends the run after this iteration."""

    def after_step(self) -> None:
        t = self.trainer
        if t.stop_now and t.iter < t.s.max_iter:  # (at max_iter the run ends as usual: model_final.pt is written)
            t.stop_run(t.iter)


class PeriodicEvaluator(HookBase):
    """COCO evaluation on the val split every `period` iterations and, with `at_end`, after the last one; every rank
    predicts its share of the images, rank 0 runs COCOeval, every rank gets the metrics."""

    def __init__(self, period: int, at_end: bool) -> None:
        self.period, self.at_end = period, at_end

    def run(self, it: int) -> dict:
        t = self.trainer
        if t.val_ds is None:
            return {}
        s = t.s
        with t.ema.applied() if t.ema is not None else contextlib.nullcontext():  # the averaged weights, if any
            t.model.eval()
            with t.compile_errors():
                metrics, _ = evaluate(Predictor(t.model, t.cfg.input), t.val_ds, batch_size=max(s.batch, 1),
                                      log=t.say, progress=t.progress and t.info.is_main,
                                      distributed=t.info.world > 1, max_images=s.eval_max_images,
                                      cat_ids=t.val_cat_ids)
            t.model.train()
            t.say(f"iteration {it} COCO AP{' (weight average)' if t.ema is not None else ''}\n"
                  + format_table(metrics))
            for h in t.hooks:
                h.after_eval(it, metrics)
        t.last_metrics = metrics
        return metrics

    def after_step(self) -> None:
        done, s = self.trainer.iter, self.trainer.s
        if self.period and done % self.period == 0 and done < s.max_iter:
            self.run(done)
            barrier(self.trainer.info)

    def after_train(self) -> None:
        if self.at_end:
            self.run(self.trainer.iter)


def best_metric_key(name: str) -> tuple[str, str] | None:
    """`solver.best_metric` "segm.AP" -> ("segm", "AP"); "" -> None."""
    if not name:
        return None
    iou_type, _, stat = name.partition(".")
    if iou_type not in ("bbox", "segm") or stat not in STAT_NAMES:
        raise MrcnnError(f"solver.best_metric must be bbox.STAT or segm.STAT with STAT one of "
                         f"{', '.join(STAT_NAMES)} (or empty: off), got {name!r}")
    return iou_type, stat


class BestModel(HookBase):
    """model_best.pt: the weights (no optimizer state) of the evaluation with the highest `solver.best_metric`
    (first on ties). trainer.best ({"metric", "value", "iter"}) is kept on every rank, so their last.pt payloads
    agree, and resumes with the run."""

    def __init__(self, name: str, out_dir: Path, is_main: bool) -> None:
        self.name, self.out_dir, self.is_main = name, out_dir, is_main
        self.key = best_metric_key(name)

    def after_eval(self, it: int, metrics: dict) -> None:
        t = self.trainer
        if self.key is None or self.key[0] not in metrics:
            return
        value = float(metrics[self.key[0]][self.key[1]])
        if t.best and value <= t.best["value"]:
            return
        t.best = {"metric": self.name, "value": value, "iter": it}
        if not self.is_main:
            return
        save_checkpoint(self.out_dir / "model_best.pt", {"config": t.cfg.to_dict(), "class_names": t.names,
                                                         "model": t.model.state_dict(), "iteration": it,
                                                         "best": t.best, "init": t.init})
        t.say(f"model_best.pt: {self.name} {value:.4f} at iteration {it}")
