"""The optimiser and the per-iteration learning-rate schedule of a training recipe."""

from __future__ import annotations

import torch

from .config import TrainConfig


def lr_factor(config: TrainConfig, iteration: int, total: int) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based) of ``total`` (per-iteration schedule)."""
    if config.schedule == "poly":
        return (1.0 - min(iteration, total) / total) ** config.poly_power
    if config.schedule == "step":
        return 1.0 if iteration < config.step_at * total else config.step_factor
    return 1.0


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=config.lr, alpha=config.rmsprop_alpha, eps=config.eps,
            momentum=config.momentum, weight_decay=config.weight_decay,
        )  # fmt: skip
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, eps=config.eps, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )
