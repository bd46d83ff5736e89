"""Quality: train the CPU config (shapes-tiny) from scratch on the synthetic dataset within a time budget
(default 10 minutes) and report held-out val bbox/segm AP. Target: bbox AP >= 0.5 and segm AP >= 0.5.

  python benchmarks/train_synthetic.py [--minutes 10] [--out /tmp/synth-bench] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import machine, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/mrcnn-synth-bench")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--max-iter", type=int, default=None, help="default: the config's")
    ap.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="wall-clock budget for training: the run shortens itself to fit (solver.max_minutes, "
        "98%% of it for the loop: set-up and the final checkpoint take the rest), then it is checked",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value (repeatable)")
    a = ap.parse_args()

    from mrcnn.api.validate import evaluate_artifact
    from mrcnn.config import get_config
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.evaluation.coco import format_table
    from mrcnn.training.trainer import train

    out = Path(a.out)
    data = out / "data"
    if not (data / "annotations" / "instances_val2017.json").exists():
        generate_synthetic(data, n_train=a.train, n_val=a.val, size=256, seed=0)
    cfg = get_config("shapes-tiny", a.set)
    if a.max_iter:
        cfg.solver.max_iter = a.max_iter
    if a.minutes > 0:  # on a machine slower than this one the run gets shorter, not over the budget
        cfg.solver.max_minutes = 0.98 * a.minutes
    run = out / f"run-{int(time.time())}"
    t0 = time.time()
    res = train(cfg, data, run, evaluate_at_end=False, device="cpu", progress=False, log=lambda m: print(m, flush=True))
    train_s = time.time() - t0
    metrics = evaluate_artifact(res.checkpoint, data, device="cpu", progress=False, log=lambda m: None)
    print(format_table(metrics))
    online = None
    ck = torch.load(res.checkpoint, weights_only=True)
    if ck.get("ema"):  # --set solver.ema_decay=D: the same run's online weights too (a paired comparison)
        path = run / "online.pt"
        torch.save({**ck, "model": ck["ema"]["online"], "ema": None}, path)
        online = evaluate_artifact(path, data, device="cpu", progress=False, log=lambda m: None)
        print(f"online weights (no average): bbox AP {online['bbox']['AP']:.3f} segm AP {online['segm']['AP']:.3f}")
    within = a.minutes <= 0 or train_s <= a.minutes * 60  # (--minutes 0: no budget)
    budget = f"budget {a.minutes} min: {'ok' if within else 'OVER'}" if a.minutes > 0 else "no budget"
    print(
        f"trained {res.iteration} iterations in {train_s / 60:.1f} min ({budget}); "
        f"bbox AP {metrics['bbox']['AP']:.3f} segm AP {metrics['segm']['AP']:.3f}"
    )
    if not a.no_save:
        p = save(
            "train_synthetic",
            {
                "machine": machine("cpu"),
                "config": cfg.to_dict(),
                "train_seconds": train_s,
                "within_budget": within,
                "iterations": res.iteration,
                "metrics": metrics,
                "online_metrics": online,
            },
            a.json,
        )
        print(f"saved {p}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
