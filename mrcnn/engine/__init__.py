"""Training engine: trainer, checkpoints, COCO evaluation, progress reporting."""
