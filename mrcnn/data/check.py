"""`mrcnn data check DATA`: read a dataset the way training does and report what it holds and what it would skip,
before hours of training find out (images, instances per class, crowd regions, every bad-data case of
`CocoDetection`; with `decode`, corrupt image files too)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mrcnn.errors import MrcnnError


def instance_counts(ds) -> tuple[np.ndarray, dict[str, int]]:
    """(instances of each image, instances of each class), crowd regions not counted."""
    A = ds._anns
    crowd = A.iscrowd
    starts = A.image_start
    cum = np.concatenate([[0], np.cumsum(~crowd)])
    per_image = cum[starts[1:]] - cum[starts[:-1]]
    ids = A.category_id[~crowd]
    return per_image, {name: int((ids == cid).sum()) for cid, name in zip(ds.cat_ids, ds.class_names, strict=True)}


def training_issues(ds, split: str = "train") -> tuple[list[str], list[str]]:
    """(errors, warnings) of a split as training data, the one rule `mrcnn train` and `mrcnn data check` share:
    no usable image or no usable instance is an error (nothing would be learned), a class without instances a
    warning (its head rows would never see a positive)."""
    errors, warnings = [], []
    skipped = f" ({ds.report()})" if ds.report() else ""
    _, per_class = instance_counts(ds)
    if len(ds) == 0:
        errors.append(f"{ds.ann_file}: no usable training images in the {split} split{skipped}")
    elif sum(per_class.values()) == 0:
        errors.append(
            f"{ds.ann_file}: no usable training instances in the {split} split (nothing to learn)"
            f"{skipped or ': its images have no annotations'}"
        )
    empty = [n for n, c in per_class.items() if c == 0]
    if empty and not errors:
        warnings.append(
            f"warning: classes without training instances in the {split} split: {', '.join(empty)} "
            "(the model will not learn to detect them)"
        )
    return errors, warnings


def check_split(
    data: str | Path, split: str, *, decode: bool = False, log: Callable[[str], None] = print, progress: bool = True
) -> dict | None:
    """Counts and problems of one split (None where the dataset has no such split)."""
    from mrcnn.data.layout import open_split
    from mrcnn.progress import reporter

    ds = open_split(data, split, required=False, logger=lambda m: log(f"  warning: {m}"))
    if ds is None:
        return None
    log(f"{split}: {ds.ann_file} (images in {ds.img_dir})")
    if decode:
        with reporter(len(ds), f"{split}: decoding", log=log, enabled=progress, every=max(1, len(ds) // 4)) as rep:
            for i in range(len(ds)):
                ds.load_image(i)  # a corrupt or mis-sized file is warned about and counted
                rep.update(i + 1)
    per_image, per_class = instance_counts(ds)
    crowd = ds._anns.iscrowd
    out = {
        "annotations": str(ds.ann_file),
        "images_dir": str(ds.img_dir),
        "images": len(ds),
        "images_without_instances": int((per_image == 0).sum()),
        "instances": int((~crowd).sum()),
        "crowd": int(crowd.sum()),
        "classes": len(ds.class_names),
        "per_class": per_class,
        "skipped": dict(Counter(ds.skipped)),
    }
    log(
        f"  {out['images']} images ({out['images_without_instances']} without instances), {out['instances']} "
        f"instances (+{out['crowd']} crowd regions), {out['classes']} classes"
    )
    log("  instances per class: " + ", ".join(f"{n} {c}" for n, c in per_class.items()))
    empty = [n for n, c in per_class.items() if c == 0]
    if empty:
        log(f"  warning: classes without instances: {', '.join(empty)}")
    log(f"  {ds.report() or 'nothing skipped'}")
    from mrcnn.data.layout import role_of

    if role_of(split) == "train":  # what `mrcnn train` would refuse
        out["errors"] = training_issues(ds, split)[0]
    return out


def check_dataset(
    data: str | Path,
    splits: Sequence[str] = ("train", "val"),
    *,
    decode: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Every split of `splits` that `data` has; MrcnnError where it has none, or (after the report) where anything
    would be skipped."""
    from mrcnn.data.layout import require_split

    report = {}
    for split in splits:
        r = check_split(data, split, decode=decode, log=log, progress=progress)
        if r is not None:
            report[split] = r
    if not report:
        require_split(data, splits[0])  # raises with what was looked for
    for r in report.values():
        if r.get("errors"):
            raise MrcnnError(f"{r['errors'][0]}; `mrcnn train` refuses it")
    problems = sum(sum(r["skipped"].values()) for r in report.values())
    if problems:
        raise MrcnnError(
            f"{data}: {problems} problem(s), listed above; training skips those samples (--strict: stops at the first)"
        )
    return report
