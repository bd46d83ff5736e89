"""The Trainer's hooks (hook_base.HookBase): each does one job around the loop, in the order the Trainer holds them,
through the trainer's public methods and its metrics storage.

    NonFiniteGuard       stops the run after solver.max_bad_steps non-finite steps in a row
    TimeBudgetHook       --max-minutes: shortens the run to what fits at its measured pace (trainer.end_at)
    PeriodicCheckpointer last.pt every solver.checkpoint_period, model_final.pt at the end (trainer.save_checkpoint)
    PeriodicEvaluator    COCO evaluation every solver.eval_period and at the end (trainer.evaluate)
    BestModel            model_best.pt: the weights of the best evaluation by solver.best_metric (trainer.save_best)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from mrcnn.errors import MrcnnError
from mrcnn.evaluation.coco import STAT_NAMES
from mrcnn.training.distributed import DistInfo, barrier
from mrcnn.training.hook_base import HookBase


class NonFiniteGuard(HookBase):
    """A non-finite loss skips its step (the trainer); `max_bad` in a row end the run with one error line, keeping
    the last good checkpoint."""

    def __init__(self, max_bad: int) -> None:
        self.max_bad = max_bad

    def after_step(self) -> None:
        t = self.trainer
        if t.bad_in_a_row >= self.max_bad:
            last = t.last_checkpoint()
            raise MrcnnError(
                f"non-finite loss in {t.bad_in_a_row} consecutive steps (iteration {t.iter}); stopped. "
                f"Last good checkpoint: {last or 'none'}"
            )

    def after_train(self) -> None:
        """A run whose weights ended non-finite is an error, not a model: model_final.pt is not written."""
        t = self.trainer
        bad = [n for n, v in t.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise MrcnnError(
                f"the weights are not finite after iteration {t.iter} ({len(bad)} tensors, e.g. "
                f"{bad[0]}); no model_final.pt was written (lower --lr, or clip gradients: "
                "--set solver.grad_clip=10)"
            )


class TimeBudget:
    """`solver.max_minutes`: from the pace so far (evaluations included), how many iterations fit in the budget.
    Asked at every 2% of the run (from the 10th iteration on, past the slow first steps); the answer only ever
    shortens the run, and with no budget, or one that fits the run, it is None (the run is what it would be)."""

    def __init__(self, seconds: float, start_iter: int, max_iter: int, clock: Callable[[], float]) -> None:
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
        self.budget = TimeBudget(self.minutes * 60.0, t.start_iter, t.max_iter, t.clock)

    def after_step(self) -> None:
        t, b = self.trainer, self.budget
        fits = b.iterations_that_fit(t.iter, t.max_iter, t.info)
        if fits is not None and fits < t.max_iter:
            if b.planned == b.end:  # said once; the end is re-estimated every 2% of the run
                t.say(
                    f"time budget {self.minutes:g} min: {fits} of {t.max_iter} iterations fit at "
                    f"{b.pace(t.iter):.2f} s per iteration; the LR steps move with the end"
                )
            b.end = fits
            t.end_at(fits)

    def after_train(self) -> None:
        b = self.budget
        if b is not None and b.end < b.planned:
            self.trainer.say(
                f"time budget {self.minutes:g} min: the run ended at iteration {self.trainer.iter} of "
                f"{b.planned} planned"
            )


class PeriodicCheckpointer(HookBase):
    """last.pt every `period` iterations and at the end, then model_final.pt."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iter % self.period == 0 and t.iter < t.max_iter:
            t.save_checkpoint()

    def after_train(self) -> None:
        self.trainer.save_checkpoint(final=True)


class PeriodicEvaluator(HookBase):
    """COCO evaluation on the val split every `period` iterations and, with `at_end`, after the last one."""

    def __init__(self, period: int, at_end: bool) -> None:
        self.period, self.at_end = period, at_end

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iter % self.period == 0 and t.iter < t.max_iter:
            t.evaluate(t.iter)
            barrier(t.info)

    def after_train(self) -> None:
        if self.at_end:
            self.trainer.evaluate(self.trainer.iter)


def best_metric_key(name: str) -> tuple[str, str] | None:
    """`solver.best_metric` "segm.AP" -> ("segm", "AP"); "" -> None."""
    if not name:
        return None
    iou_type, _, stat = name.partition(".")
    if iou_type not in ("bbox", "segm") or stat not in STAT_NAMES:
        raise MrcnnError(
            f"solver.best_metric must be bbox.STAT or segm.STAT with STAT one of "
            f"{', '.join(STAT_NAMES)} (or empty: off), got {name!r}"
        )
    return iou_type, stat


class BestModel(HookBase):
    """model_best.pt: the weights (no optimizer state) of the evaluation with the highest `solver.best_metric`
    (first on ties). The trainer keeps the best so far (trainer.best: {"metric", "value", "iter"}) on every rank, so
    their last.pt payloads agree, and it resumes with the run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = best_metric_key(name)

    def after_eval(self, it: int, metrics: dict) -> None:
        t = self.trainer
        if self.key is None or self.key[0] not in metrics:
            return
        value = float(metrics[self.key[0]][self.key[1]])
        if t.best and value <= t.best["value"]:
            return
        t.save_best(self.name, value, it)
