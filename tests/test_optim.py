"""BertAdam as the official code runs it, against a restatement, and how far AdamW is from it."""

from __future__ import annotations

import torch

from xclip_lightning.optim import BertAdam


def official_bertadam(param, grads, lr, betas, eps, weight_decay, max_grad_norm):
    """The official step, written out: per-tensor clip, moments without bias correction, decoupled decay."""
    m, v, p = torch.zeros_like(param), torch.zeros_like(param), param.clone()
    for g in grads:
        norm = g.norm()
        if max_grad_norm > 0 and norm > max_grad_norm:
            g = g * max_grad_norm / norm
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * (m / (v.sqrt() + eps) + weight_decay * p)
    return p


def run(optimizer_class, param, grads, **kwargs):
    p = torch.nn.Parameter(param.clone())
    optimizer = optimizer_class([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        optimizer.step()
    return p.detach()


def test_bertadam_is_the_official_update():
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(50, dtype=torch.float64, generator=generator)
    grads = [torch.randn(50, dtype=torch.float64, generator=generator) * (0.1 + i % 3) for i in range(20)]
    args = {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2, "max_grad_norm": 1.0}
    torch.testing.assert_close(run(BertAdam, param, grads, **args), official_bertadam(param, grads, **args))


def test_adamw_differs_from_bertadam_by_its_bias_correction():
    """With identical gradients, 20 steps: the update of AdamW differs from BertAdam's by about 30% (the issue's
    measurement: 28-31%), and with the per-tensor clip not acting, that is all bias correction."""
    generator = torch.Generator().manual_seed(1)
    param = torch.randn(1000, dtype=torch.float64, generator=generator)
    grads = [0.01 * torch.randn(1000, dtype=torch.float64, generator=generator) for _ in range(20)]
    common = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2}
    bert = run(BertAdam, param, grads, **common, max_grad_norm=1.0) - param
    adamw = run(torch.optim.AdamW, param, grads, **common) - param
    relative = ((adamw - bert).norm() / bert.norm()).item()
    assert 0.2 < relative < 0.4, relative
    assert all(g.norm() < 1.0 for g in grads)  # so the per-tensor clip never acted here
