"""Training losses on logits (B, K, d, h, w) and integer targets (B, d, h, w).

- ``ce``: unweighted cross-entropy over every output voxel (the reference);
- ``dice``: soft Dice on softmax probabilities, 1 - mean over classes of
  (2 sum(p*g) + eps) / (sum(p) + sum(g) + eps), sums over the whole batch ("batch Dice", stable
  when a patch lacks a class); background excluded unless ``include_background``;
- ``ce+dice``: their sum (nnU-Net's default).
Computed in float32 even under autocast: Dice sums over ~10^6 voxels lose precision in half.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "dice", "ce+dice")


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = False, eps: float = 1e-5
) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if not include_background and dice.numel() > 1:
        dice = dice[1:]
    return 1.0 - dice.mean()


class SegmentationLoss(torch.nn.Module):
    def __init__(self, name: str = "ce", include_background: bool = False) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
        self.name = name
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if "ce" in self.name.split("+"):
            loss = loss + F.cross_entropy(logits.float(), target.long())
        if "dice" in self.name.split("+"):
            loss = loss + soft_dice_loss(logits, target, self.include_background)
        return loss
