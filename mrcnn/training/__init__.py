"""Training: the Trainer and its hooks (checkpoints, best model, periodic evaluation, metrics, time budget, signals),
the weight average (ema), run folders (runs) and stopping on a signal (signals)."""
