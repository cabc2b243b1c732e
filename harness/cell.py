"""The one recurrent layer every variant runs on: an LSTM or GRU whose input, recurrent and cell
connections take the masks of `dropbench.harness.masks`. With no masks it computes exactly what
`torch.nn.LSTM` / `torch.nn.GRU` compute; parameters have the same names and shapes
(weight_ih: (G*H, I), weight_hh: (G*H, H), gates in PyTorch's order i,f,g,o / r,z,n).

Input projections for the whole chunk are computed before the time loop (x_t does not depend on
h_{t-1}), so only the recurrent product runs per step. The standard LSTM step runs as one autograd
node with a hand-written backward (`lstm_kernel.py`); where no mask touches the recurrence, the
fused oneDNN/cuDNN kernel runs instead. The step loop below serves the GRU and variants with their
own `cell_step`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from .lstm_kernel import masked_lstm, runs_in_cpu_kernel
from .masks import LayerMasks, step_mask
from .projections import project_hidden, project_inputs

GATES = {"lstm": 4, "gru": 3}


def lstm_step(x_proj, h, c, recurrent: Callable, cell_mask):
    """One LSTM step. x_proj: (B, 4H) input projection incl. bias; recurrent(h) -> (B, 4H);
    cell_mask: None or (B, H). Returns (h, c). Variants with a custom `cell_step` share this signature."""
    i, f, g, o = (x_proj + recurrent(h)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if cell_mask is not None:
        c = c * cell_mask
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gru_step(x_proj, h, recurrent: Callable):
    """One GRU step as torch.nn.GRU: n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1-z) n + z h."""
    x_r, x_z, x_n = x_proj.chunk(3, 1)
    h_r, h_z, h_n = recurrent(h).chunk(3, 1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


class RecurrentLayer(nn.Module):
    # Where no mask touches the recurrence (no recurrent or cell mask, one input mask for all gates:
    # none, zaremba, ...), the masked input goes through PyTorch's fused kernel (oneDNN / cuDNN),
    # which computes the same function as the step loop below, faster; except where the CPU
    # build's own kernel runs the layer, which is faster still (small PTB model, 2-core Xeon:
    # zaremba 0.96x -> 1.01x and none 1.00x -> 1.04x the speed of torch.nn.LSTM).
    use_fused_kernel = True

    def __init__(self, cell: str, input_size: int, hidden_size: int):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {sorted(GATES)}, not {cell!r}")
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        gates = GATES[cell]
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size))
        bound = 1 / math.sqrt(hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def initial_state(self, batch: int, device=None):
        zeros = torch.zeros(batch, self.hidden_size, device=device or self.weight_hh.device, dtype=self.weight_hh.dtype)
        return (zeros, zeros.clone()) if self.cell == "lstm" else (zeros,)

    def forward(self, x: torch.Tensor, state: tuple, masks: Optional[LayerMasks] = None, cell_step: Optional[Callable] = None):
        """x: (T, B, I); state: (h, c) for LSTM, (h,) for GRU, each (B, H). Returns (T, B, H), state."""
        masks = masks or LayerMasks()
        if self.use_fused_kernel and cell_step is None and masks.recurrent is None and masks.cell is None \
                and (masks.input is None or masks.input.shape[1] == 1) \
                and not (self.cell == "lstm" and runs_in_cpu_kernel(x, self.weight_ih, self.weight_hh)):
            return self._fused(x if masks.input is None else x * masks.input[:, 0], state)
        if self.cell == "lstm" and cell_step is None:
            out, h, c = masked_lstm(x, masks.input, *state, self.weight_ih, self.bias_ih, self.weight_hh, self.bias_hh, masks.recurrent, masks.cell)
            return out, (h, c)
        x_proj = project_inputs(x, self.weight_ih, self.bias_ih, masks.input)
        outputs = []
        if self.cell == "lstm":
            step = cell_step or lstm_step
            h, c = state
            for t, x_t in enumerate(x_proj.unbind(0)):  # unbind: one backward for all steps, not T slice-grads
                z_h = step_mask(masks.recurrent, t)
                h, c = step(x_t, h, c, lambda h_: project_hidden(h_, self.weight_hh, self.bias_hh, z_h), step_mask(masks.cell, t))
                outputs.append(h)
            state = (h, c)
        else:
            (h,) = state
            for t, x_t in enumerate(x_proj.unbind(0)):
                z_h = step_mask(masks.recurrent, t)
                h = gru_step(x_t, h, lambda h_: project_hidden(h_, self.weight_hh, self.bias_hh, z_h))
                outputs.append(h)
            state = (h,)
        return torch.stack(outputs), state

    def _fused(self, x: torch.Tensor, state: tuple):
        params = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        initial = tuple(s.unsqueeze(0) for s in state)  # (1, B, H): one layer
        if self.cell == "lstm":
            out, h, c = torch.lstm(x, initial, params, True, 1, 0.0, self.training, False, False)
            return out, (h[0], c[0])
        out, h = torch.gru(x, initial[0], params, True, 1, 0.0, self.training, False, False)
        return out, (h[0],)
