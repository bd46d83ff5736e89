"""The hook interface of the Trainer, as detectron2's HookBase: a hook does one job around the loop. The trainer
dispatches every event to its hooks in their order, and gives each hook a weak proxy of itself (`hook.trainer`); a
hook acts through the trainer's public methods and its metrics storage, never through another hook.

    before_train()          once, before the first iteration
    after_step()            after each iteration (trainer.iter: iterations done; trainer.storage.latest: its metrics)
    after_eval(it, metrics) after each COCO evaluation (trainer.evaluate; inside it the weight average, if any, is
                            applied)
    after_train()           once, after the last iteration (not after an error or a stop)
"""

from __future__ import annotations

from typing import Any


class HookBase:
    trainer: Any  # weakref.proxy of the Trainer that registered the hook

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_eval(self, it: int, metrics: dict) -> None:
        pass

    def after_train(self) -> None:
        pass
