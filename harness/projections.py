"""The masked affine maps of a recurrent layer, shared by the step loop (`cell.py`) and the
hand-written recurrence (`lstm_kernel.py`). With G masks (untied), gate k sees only its own
masked copy of its input."""

from __future__ import annotations

from typing import Optional

import torch


def project_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """x: (T, B, I), mask: None or (T|1, G|1, B, I). Returns (T, B, G*H) = mask(x) W^T + b,
    where with G masks gate k sees only its own masked copy of x."""
    if mask is None:
        return torch.nn.functional.linear(x, weight, bias)
    if mask.shape[1] == 1:
        return torch.nn.functional.linear(x * mask[:, 0], weight, bias)
    steps, batch, _ = x.shape
    gates = mask.shape[1]
    per_gate = weight.view(gates, -1, weight.shape[1])  # (G, H, I)
    out = torch.einsum("tgbi,ghi->tbgh", x.unsqueeze(1) * mask, per_gate)
    return out.reshape(steps, batch, -1) + bias


def project_hidden(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """h: (B, H), mask: None or (G|1, B, H). Returns (B, G*H), gate k using its own mask of h."""
    if mask is None:
        return torch.nn.functional.linear(h, weight, bias)
    if mask.shape[0] == 1:
        return torch.nn.functional.linear(h * mask[0], weight, bias)
    gates, batch, hidden = mask.shape
    per_gate = weight.view(gates, -1, hidden).transpose(1, 2)  # (G, H_in, H_out)
    out = torch.baddbmm(bias.view(gates, 1, -1), h.unsqueeze(0) * mask, per_gate)  # (G, B, H)
    return out.transpose(0, 1).reshape(batch, -1)
