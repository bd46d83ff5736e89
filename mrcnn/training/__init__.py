"""Training: the Trainer (trainer) and its hooks (hook_base, hooks: checkpoints, best model, periodic evaluation, time
budget, non-finite steps), the metrics storage (storage), the weight average (ema), run folders (runs) and stopping
on a signal (signals)."""
