"""The batched, fixed-size training sampler (mrcnn.model.rpn.sample_balanced) against torchvision's
BalancedPositiveNegativeSampler: the same numbers of positives and negatives, only the right kinds, uniform choice,
and per-image generators that make an image's choice independent of the rest of the batch."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler  # noqa: PLC2701 - the peer's own helper

from mrcnn.model.rpn import sample_balanced


def _labels(n: int, n_pos: int, n_neg: int, seed: int) -> torch.Tensor:
    """n slots: n_pos positives (classes 1..5), n_neg negatives (0), the rest ignored (-1), shuffled."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.full((n,), -1, dtype=torch.int64)
    lab[:n_pos] = torch.randint(1, 6, (n_pos,), generator=g)
    lab[n_pos : n_pos + n_neg] = 0
    return lab[torch.randperm(n, generator=g)]


CASES = [  # (slots, positives, negatives, batch size, positive fraction)
    (1000, 30, 900, 256, 0.5),  # few positives: all of them, negatives fill the rest
    (1000, 400, 500, 256, 0.5),  # many positives: capped at 128
    (1000, 0, 700, 256, 0.5),  # no positives
    (1000, 50, 0, 256, 0.5),  # no negatives
    (1000, 10, 20, 256, 0.25),  # fewer candidates than the batch size
    (100, 60, 40, 512, 0.25),  # fewer slots than the batch size
    (5000, 2000, 2900, 512, 0.25),
]


@pytest.mark.parametrize("n,n_pos,n_neg,batch,fraction", CASES)
def test_counts_and_kinds_equal_torchvision(n, n_pos, n_neg, batch, fraction):
    rows = [_labels(n, n_pos, n_neg, seed) for seed in range(3)]
    labels = torch.stack(rows)
    index, ok = sample_balanced(labels, batch, fraction, [None] * 3)
    pos_ref, neg_ref = BalancedPositiveNegativeSampler(batch, fraction)(rows)
    assert index.shape == ok.shape == (3, min(batch, n))
    for i in range(3):
        chosen = index[i][ok[i]]
        kinds = labels[i][chosen]
        n_p, n_n = int((kinds >= 1).sum()), int((kinds == 0).sum())
        want_p, want_n = int(pos_ref[i].sum()), int(neg_ref[i].sum())
        print(f"image {i}: positives {n_p} (torchvision {want_p}), negatives {n_n} (torchvision {want_n})")
        assert (n_p, n_n) == (want_p, want_n)
        assert n_p + n_n == chosen.numel(), "an ignored slot was sampled"
        assert chosen.unique().numel() == chosen.numel(), "a slot was sampled twice"
        # the sampled slots come first, positives before negatives
        assert ok[i, : chosen.numel()].all() and not ok[i, chosen.numel() :].any()
        assert (kinds[:n_p] >= 1).all() and (kinds[n_p:] == 0).all()


def test_choice_is_uniform():
    """Each of 40 positives is drawn with probability 16/40 and each of 200 negatives with 48/200 (binomial; the
    frequencies over 3000 draws must lie within 5 standard deviations)."""
    labels = _labels(400, 40, 200, 0)[None]
    draws = 3000
    hits = torch.zeros(400)
    torch.manual_seed(0)
    for _ in range(draws):
        index, ok = sample_balanced(labels, 64, 0.25, [None])
        hits[index[0][ok[0]]] += 1
    for kind, mask, p in (("positive", labels[0] >= 1, 16 / 40), ("negative", labels[0] == 0, 48 / 200)):
        freq = hits[mask] / draws
        sigma = (p * (1 - p) / draws) ** 0.5
        worst = float((freq - p).abs().max())
        print(
            f"{kind}: frequency {float(freq.min()):.3f}..{float(freq.max()):.3f}, expected {p:.3f} "
            f"(worst deviation {worst / sigma:.1f} sigma)"
        )
        assert worst <= 5 * sigma
    assert hits[labels[0] < 0].sum() == 0


def test_generator_rows_independent_of_the_batch():
    a, b = _labels(800, 100, 600, 1), _labels(800, 20, 700, 2)

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    both = sample_balanced(torch.stack([a, b]), 128, 0.5, [gen(7), gen(8)])
    alone = sample_balanced(a[None], 128, 0.5, [gen(7)])
    assert torch.equal(both[0][0], alone[0][0]) and torch.equal(both[1][0], alone[1][0])
    other = sample_balanced(torch.stack([a, b]), 128, 0.5, [gen(9), gen(8)])
    assert not torch.equal(other[0][0][other[1][0]].sort().values, both[0][0][both[1][0]].sort().values)
