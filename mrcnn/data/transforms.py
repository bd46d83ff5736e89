"""Training/eval transforms, the seeded training dataset, collation and the deterministic global batch sampler.

Shapes: B images per batch; N instances; H, W original size; h, w resized size.

Determinism contract: the augmentation of sample i at epoch e depends only on (seed, e, i), and the global batch of
iteration t depends only on (seed, t, batch, len(dataset), the samples' aspect groups); single-process,
gradient-accumulation and DDP runs therefore see the same global batches with the same augmentations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mrcnn.errors import MrcnnError
from mrcnn.model.preprocess import batch_images, resize_boxes, resize_image, resize_masks, to_float_image

_MASK63 = (1 << 63) - 1


def hash_seed(*ints: int) -> int:
    """Deterministic 63-bit seed from integers (blake2b of their decimal text; stable across processes/machines)."""
    text = ",".join(str(int(v)) for v in ints).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _MASK63


def _resize(image: Tensor, target: dict, min_size: int, max_size: int) -> tuple[Tensor, dict]:
    img = resize_image(to_float_image(image), min_size, max_size)
    h, w = int(img.shape[-2]), int(img.shape[-1])
    out = dict(target)
    if "boxes" in target:
        out["boxes"] = resize_boxes(target["boxes"].float(), tuple(image.shape[-2:]), (h, w))
    if "masks" in target:
        masks = resize_masks(target["masks"], min_size, max_size)
        if tuple(masks.shape[-2:]) != (h, w):  # never expected: same scale rule as resize_image
            raise RuntimeError(f"resized masks {tuple(masks.shape[-2:])} != resized image {(h, w)}")
        out["masks"] = masks
    return img, out


def hflip(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    """Mirror image [3,h,w], masks [N,h,w] and xyxy boxes (x0' = w - x1, x1' = w - x0)."""
    w = image.shape[-1]
    out = dict(target)
    if "boxes" in target:
        b = target["boxes"]
        out["boxes"] = torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), dim=-1)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return image.flip(-1), out


class EvalTransform:
    """uint8 [3,H,W] -> float32 0..1 [3,h,w] resized as torchvision (shorter side min_size, longer <= max_size)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = int(min_size), int(max_size)

    def __call__(self, image: Tensor, target: dict, generator: torch.Generator | None = None):
        return _resize(image, target, self.min_size, self.max_size)


class TrainTransform(EvalTransform):
    """EvalTransform, then a horizontal flip with probability hflip_prob.

    Multi-scale training (`min_sizes`, the seed's MIN_SIZE_TRAIN tuple, detectron2's "choice" sampling): each sample's
    shorter side is drawn uniformly from `min_sizes` (first, from the sample's generator), the longer side still
    capped at max_size; empty: always `min_size`, and nothing is drawn.
    The flip decision is `torch.rand(1, generator=generator) < hflip_prob`, drawn on every call (even with
    hflip_prob 0 or 1) so the generator stream does not depend on the probability.
    """

    def __init__(self, min_size: int, max_size: int, hflip_prob: float = 0.5, min_sizes: tuple[int, ...] = ()) -> None:
        super().__init__(min_size, max_size)
        self.hflip_prob = float(hflip_prob)
        self.min_sizes = tuple(int(v) for v in min_sizes)
        if any(v < 1 for v in self.min_sizes):
            raise MrcnnError(f"input.train_min_sizes must be positive sizes, got {self.min_sizes}")

    def __call__(self, image: Tensor, target: dict, generator: torch.Generator | None = None):
        min_size = self.min_size
        if self.min_sizes:
            min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), (1,), generator=generator))]
        image, target = _resize(image, target, min_size, self.max_size)
        u = float(torch.rand(1, generator=generator))
        if u < self.hflip_prob:
            image, target = hflip(image, target)
        return image, target


class TrainDataset(torch.utils.data.Dataset):
    """A CocoDetection with seeded per-sample augmentation.

    Item i at epoch e (set_epoch) uses torch.Generator().manual_seed(hash_seed(seed, e, i)) and gets
    target["seed"] = hash_seed(seed, e, i, 1) (the model's per-image sampling seed). The key may also be a pair
    (e, i), which pins the epoch inside DataLoader workers (see GlobalBatchSampler.global_items).
    """

    def __init__(self, dataset, transform, seed: int = 0) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (self.epoch, int(key))
        g = torch.Generator().manual_seed(hash_seed(self.seed, epoch, i))
        image, target = self.dataset[i]
        if self.transform is not None:
            image, target = self.transform(image, target, g)
        target = dict(target)
        target["seed"] = hash_seed(self.seed, epoch, i, 1)
        return image, target


def collate(batch: list, size_divisible: int = 32, pad_to: tuple[int, int] | None = None) -> dict:
    """[(image [3,h,w] float, target)] -> {images [B,3,H,W] (zero-padded to size_divisible, and to at least
    `pad_to`), image_sizes [B,2] int64 (h, w), targets, orig_sizes [(H, W)], image_ids, indices, bad_files}.

    A fixed `pad_to` makes each image's result independent of which images share its batch (padding changes
    GroupNorm statistics and border convolutions), which exact accumulation / DDP equivalence needs."""
    images = [b[0] for b in batch]
    targets = [dict(b[1]) for b in batch]
    bad_files: dict[int, str] = {}
    for t in targets:
        bad_files.update(t.pop("bad_files", {}))
    padded, sizes = batch_images(images, size_divisible, pad_to)
    return {
        "bad_files": bad_files,  # items the dataset passed over for these (unreadable files): {item: reason}
        "images": padded,
        "image_sizes": sizes,
        "targets": targets,
        "orig_sizes": [tuple(int(v) for v in t["orig_size"]) for t in targets],
        "image_ids": [int(t["image_id"]) for t in targets],
        "indices": [int(t["index"]) for t in targets],
    }


class GlobalBatchSampler:
    """Iteration-indexed global batches over concatenated per-epoch permutations.

    Position p = iteration * batch + k (k < batch) is sample perm(p // n)[p % n], n = len(dataset), where
    perm(e) = torch.randperm(n, Generator(hash_seed(seed, e))) (identity with shuffle=False). Nothing is dropped:
    a global batch can straddle two epochs.

    `local(iteration, rank, world, micro, accum)`: the global batch is cut into world*accum equal contiguous chunks
    and (rank, micro) gets chunk `micro * world + rank`: at each accumulation micro-step the ranks together take the
    next contiguous world-sized block. batch must be divisible by world*accum.

    `groups` (one id per sample, e.g. `CocoDetection.aspect_groups()`): aspect-ratio grouping, as the seed's and
    torchvision's samplers do. perm(e) is then reordered (`_grouped`) so that the global batches lying inside the
    epoch are drawn from one group each, except at most one batch per group made of the groups' leftovers, and are
    visited in a seeded random order; the batches that straddle two epochs may be mixed. A batch of landscape and
    portrait images is padded to a square that holds both: up to ~1.7x the pixels of either at COCO's 800 / 1333.
    Still a function of (seed, epoch); with a single group it is perm(e) unchanged.
    """

    def __init__(
        self, dataset_len: int, batch: int, seed: int = 0, shuffle: bool = True, groups: Sequence[int] | None = None
    ) -> None:
        if dataset_len <= 0:
            raise MrcnnError("the training dataset is empty")
        if batch <= 0:
            raise MrcnnError(f"batch must be positive, got {batch}")
        if groups is not None and len(groups) != dataset_len:
            raise MrcnnError(f"{len(groups)} group ids for {dataset_len} samples")
        self.n, self.batch, self.seed, self.shuffle = int(dataset_len), int(batch), int(seed), shuffle
        self.groups = [int(g) for g in groups] if groups is not None and len(set(groups)) > 1 else None
        self._perms: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        p = self._perms.get(epoch)
        if p is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(hash_seed(self.seed, epoch))
                p = torch.randperm(self.n, generator=g).tolist()
            else:
                p = list(range(self.n))
            if self.groups is not None:
                p = self._grouped(p, epoch)
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = p
        return p

    def _grouped(self, perm: list[int], epoch: int) -> list[int]:
        """perm reordered so that the aligned global batches inside the epoch come from one group each.

        Epoch e fills positions [e*n, (e+1)*n); its first `head` items complete the batch the previous epoch began,
        its last `tail` items begin the batch the next epoch completes, and the n - head - tail in between are whole
        batches. Those are each group's items in perm order cut into full batches, plus the groups' leftovers (in
        group order, so mixed only where one group's leftovers meet the next's); head and tail come from the
        leftovers (and, where too few are left, from full batches broken up for them)."""
        b, n = self.batch, self.n
        head, tail = (-epoch * n) % b, ((epoch + 1) * n) % b
        if head + tail >= n:
            return perm  # an epoch shorter than about two batches: nothing to group
        by_group: dict[int, list[int]] = {}
        for i in perm:
            by_group.setdefault(self.groups[i], []).append(i)
        full: list[list[int]] = []
        pool: list[int] = []
        for g in sorted(by_group):
            items = by_group[g]
            k = len(items) - len(items) % b
            full += [items[j : j + b] for j in range(0, k, b)]
            pool += items[k:]
        while len(pool) < head + tail:
            pool = full.pop() + pool
        inner = pool[head : len(pool) - tail]
        batches = full + [inner[j : j + b] for j in range(0, len(inner), b)]
        order = list(range(len(batches)))
        if self.shuffle:
            g = torch.Generator().manual_seed(hash_seed(self.seed, epoch, 2))
            order = torch.randperm(len(batches), generator=g).tolist()
        return pool[:head] + [i for k in order for i in batches[k]] + pool[len(pool) - tail :]

    def epoch_of(self, iteration: int) -> int:
        return iteration * self.batch // self.n

    def global_items(self, iteration: int) -> list[tuple[int, int]]:
        """[(epoch, index)] of the global batch (TrainDataset accepts these pairs as keys)."""
        out = []
        for pos in range(iteration * self.batch, (iteration + 1) * self.batch):
            e = pos // self.n
            out.append((e, self.permutation(e)[pos % self.n]))
        return out

    def batch_indices(self, iteration: int) -> list[int]:
        return [i for _, i in self.global_items(iteration)]

    def _chunk(self, items: list, rank: int, world: int, micro: int, accum: int) -> list:
        if world <= 0 or accum <= 0 or not (0 <= rank < world and 0 <= micro < accum):
            raise MrcnnError(f"bad split rank={rank}/{world} micro={micro}/{accum}")
        if self.batch % (world * accum):
            raise MrcnnError(f"global batch {self.batch} is not divisible by world size {world} x accum {accum}")
        c = self.batch // (world * accum)
        k = micro * world + rank
        return items[k * c : (k + 1) * c]

    def local(self, iteration: int, rank: int = 0, world: int = 1, micro: int = 0, accum: int = 1) -> list[int]:
        return self._chunk(self.batch_indices(iteration), rank, world, micro, accum)

    def local_items(self, iteration: int, rank: int = 0, world: int = 1, micro: int = 0, accum: int = 1):
        return self._chunk(self.global_items(iteration), rank, world, micro, accum)

    def micro_batches(
        self, start: int, stop: int, rank: int = 0, world: int = 1, accum: int = 1, pairs: bool = True
    ) -> Iterator[list]:
        """Local micro-batches for iterations start..stop-1, in order (usable as a DataLoader batch_sampler).

        With pairs=True the items are (epoch, index) keys for TrainDataset, so workers need no set_epoch.
        """
        for it in range(start, stop):
            for m in range(accum):
                if pairs:
                    yield self.local_items(it, rank, world, m, accum)
                else:
                    yield self.local(it, rank, world, m, accum)
