"""Scoring models: COCO bbox + segm AP of any predictor (`coco`), and an artifact against a reference model
(`comparison`: AP drops, the gate, detections paired up)."""

from mrcnn.evaluation.coco import STAT_NAMES, evaluate, format_per_class, format_table, match_classes
from mrcnn.evaluation.comparison import ap_drops, format_pairs, gate, pair_detections

__all__ = [
    "STAT_NAMES",
    "evaluate",
    "format_per_class",
    "format_table",
    "match_classes",
    "ap_drops",
    "format_pairs",
    "gate",
    "pair_detections",
]
