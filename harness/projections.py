"""The masked affine maps of a recurrent layer, shared by the step loop (`cell.py`), the
hand-written recurrence (`lstm_kernel.py`) and the population (`population.py`). With G masks
(untied), gate k sees only its own masked copy of its input.

A population of S models adds a leading model dimension to weights (S, G*H, I), biases (S, G*H)
and states (S, B, H); inputs then carry it after the time dimension: (T, S, B, I).
"""

from __future__ import annotations

from typing import Optional

import torch


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N), the same batch dimensions on both. A batch of one runs as a
    plain 2-D product: MKL runs it faster than the same product batched (hidden 650, caches cold
    as in a training step: W gradient 15.4 vs 16.5 ms, input gradient 8.5 vs 8.9 ms)."""
    if a.shape[:-2].numel() == 1:
        return torch.mm(a.flatten(0, -3)[0], b.flatten(0, -3)[0]).view(*a.shape[:-1], b.shape[-1])
    return torch.matmul(a, b)


def gate_major_masked(x: torch.Tensor, mask: Optional[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x: (T, [S,] B, I), mask: None or (T|1, [S,] G|1, B, I). Returns gate k's masked copy of x
    for every k, laid out ([S,] G, T, B, I): each gate's (T*B, I) rows are then one slice of a
    single batched product, with no copy before it. Written into `out` ([S,] G, T, B, I'), a
    slice of a wider buffer, where given (G may exceed the mask's: a tied mask serves every gate);
    else a new contiguous tensor with the mask's G."""
    x = x.movedim(0, -3).unsqueeze(-4)
    if out is None:
        return torch.mul(x, mask.movedim(0, -3)).contiguous()
    if mask is None:
        return out.copy_(x.expand_as(out))
    return torch.mul(x.expand_as(out), mask.movedim(0, -3).expand_as(out), out=out)


def project_gate_major(masked: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """masked ([S,] G, T, B, I) from `gate_major_masked`, weight ([S,] N, I), bias None or ([S,] N).
    Returns (T, [S,] B, N) whose k-th block of N/G columns is masked_k W_k^T (+ b_k): one batched
    product, with the bias added in it (G = 1: every gate from one copy)."""
    gates, steps, batch = masked.shape[-4:-1]
    per_gate = weight.unflatten(-2, (gates, -1)).transpose(-1, -2).flatten(0, -3)  # ([S*]G, I, N/G)
    rows = masked.flatten(-3, -2)  # ([S,] G, T*B, I)
    if gates > 1 and bias is None and masked.dim() == 4:
        # Each gate's product lands in its own column block of the (T*B, N) result: copying the
        # blocks into place afterwards cost 0.18 of a layer's 0.94 ms at hidden 200. (A
        # population's rows (T, S, B) are not one dimension of its result; its blocks are copied.)
        out = masked.new_empty(steps, batch, weight.shape[-2])
        torch.bmm(rows, per_gate, out=out.view(steps * batch, gates, -1).transpose(0, 1))
        return out
    if bias is None:
        out = batched_matmul(rows.flatten(0, -3), per_gate)
    else:
        out = torch.baddbmm(bias.unflatten(-1, (gates, 1, -1)).flatten(0, -3), rows.flatten(0, -3), per_gate)
    return out.unflatten(0, rows.shape[:-2]).unflatten(-2, (steps, batch)).movedim(-3, 0).movedim(-3, -2).flatten(-2)


def project_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """x: (T, [S,] B, I), mask: None or (T|1, [S,] G|1, B, I). Returns (T, [S,] B, G*H) =
    mask(x) W^T + b, where with G masks gate k sees only its own masked copy of x."""
    masked = x.movedim(0, -3).unsqueeze(-4) if mask is None else gate_major_masked(x, mask)
    return project_gate_major(masked, weight, bias)


def project_hidden(h: torch.Tensor, weight: torch.Tensor, base: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """h: ([S,] B, H), mask: None or ([S,] G|1, B, H), base broadcastable to ([S,] B, G*H): the
    bias, or this step's input projection with the bias already in it. Returns base + mask(h) W^T,
    gate k using its own mask of h; one fused product where the mask is tied."""
    if mask is not None and mask.shape[-3] == 1:
        h, mask = h * mask.select(-3, 0), None
    if mask is None:
        if weight.dim() == 2:
            return torch.addmm(base, h, weight.t())
        return torch.baddbmm(base, h, weight.transpose(1, 2))
    gates = mask.shape[-3]
    per_gate = weight.unflatten(-2, (gates, -1)).transpose(-1, -2)  # ([S,] G, H_in, H_out)
    out = torch.matmul(h.unsqueeze(-3) * mask, per_gate)  # ([S,] G, B, H)
    return out.transpose(-3, -2).flatten(-2) + base
