"""An exponential moving average of the model's weights (`solver.ema_decay`), as Ultralytics' ModelEMA, YOLOX's
and d2go's model EMA: evaluation, `model_best.pt`, `model_final.pt` (and so `eval`, `export`, `predict`) use the
averaged weights; training itself is unchanged (the optimizer steps the online weights).

After optimizer step u (u = 1, 2, ...) the average e of every floating-point state-dict entry w moves as
    d_u = decay * (1 - exp(-u / tau))   (tau = 0: d_u = decay)
    e_u = d_u * e_{u-1} + (1 - d_u) * w_u           (torch.lerp(e, w, 1 - d_u), one foreach call)
The ramp keeps the first steps' random weights from dominating a short run; integer buffers are copied.
"""

from __future__ import annotations

import contextlib
import math

import torch


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float, tau: float = 0.0, updates: int = 0) -> None:
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        state = model.state_dict()  # detached tensors sharing the model's storage: they see every optimizer step
        self.names = list(state)
        self._online = [state[k] for k in self.names]
        self._float = [i for i, t in enumerate(self._online) if t.is_floating_point()]
        self._other = [i for i, t in enumerate(self._online) if not t.is_floating_point()]
        self.average = [t.detach().clone() for t in self._online]

    def factor(self, updates: int) -> float:
        """d_u: the weight of the old average after update `updates`."""
        return self.decay * (1.0 - math.exp(-updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step (not after a skipped one)."""
        self.updates += 1
        w = 1.0 - self.factor(self.updates)
        torch._foreach_lerp_([self.average[i] for i in self._float], [self._online[i] for i in self._float], w)
        for i in self._other:
            self.average[i].copy_(self._online[i])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's state-dict names (what a checkpoint's "model" holds)."""
        return dict(zip(self.names, self.average, strict=True))

    def load(self, averaged: dict[str, torch.Tensor], updates: int) -> None:
        """Continue from a checkpoint's averaged weights and update count (resume)."""
        missing = [k for k in self.names if k not in averaged]
        if missing:
            raise KeyError(f"averaged weights lack {missing[0]}")
        with torch.no_grad():
            for k, t in zip(self.names, self.average, strict=True):
                t.copy_(averaged[k])
        self.updates = int(updates)

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block (evaluation); its own are put back bit for bit."""
        with torch.no_grad():
            kept = [t.clone() for t in self._online]
            for t, a in zip(self._online, self.average, strict=True):
                t.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, k in zip(self._online, kept, strict=True):
                    t.copy_(k)
