"""The masked LSTM layer over a whole chunk (input projection and recurrence) as one autograd
node, with backpropagation through time written out. It computes what the step loop of `cell.py`
computes for the standard LSTM step; recording one node instead of ~15 per step makes training
about 1.7x faster on a CPU (2 threads, hidden 128-650). On a GPU both time loops replay as
captured CUDA graphs (`cuda_graphs.py`), which removes the per-kernel launch cost that dominates
at these sizes; on a CPU they run compiled (`lstm_cpu.cpp`), and `forward_steps` /
`backward_steps` below are what the compiled loops are tested against and what runs where no
compiler is found.

Shapes of the time loops: x_proj (T, B, 4H) input projection; h0, c0 (B, H); weight (4H, H) = W_hh;
bias (4H,) = b_ih + b_hh; z_h None or (T|1, G|1, B, H) recurrent masks (G = 4 untied); z_c None or
(T|1, B, H) cell masks. A population of S models (`population.py`) adds a model dimension: x_proj
(T, S, B, 4H), h0 (S, B, H), weight (S, 4H, H), bias (S, 4H), z_h (T|1, S, G|1, B, H), z_c
(T|1, S, B, H). Per gate k, with a = activation:
    gate_k = a(x_proj_k + (h_{t-1} * z_h^k) W_k^T + b_k),   c_t = z_c * (f c_{t-1} + i g),   h_t = o tanh(c_t)
"""

from __future__ import annotations

import functools

import torch

from . import cuda_graphs, lstm_cpu
from .masks import step_mask
from .projections import batched_matmul, gate_major_masked, project_gate_major, project_hidden


def forward_steps(x_proj, h0, c0, weight, bias, z_h, z_c):
    """The T steps. Returns out (T, [S,] B, H), acts (T, [S,] B, 4H) = sigmoid(i, f), tanh(g),
    sigmoid(o), cells (T+1, [S,] B, H) with cells[0] = c0, and tanh_c (T, [S,] B, H)."""
    steps, *rows, width = x_proj.shape
    hidden = width // 4
    x_proj = x_proj + bias.unsqueeze(-2)  # b_hh once per chunk: one fused product per step below
    out = x_proj.new_empty(steps, *rows, hidden)
    acts = x_proj.new_empty(steps, *rows, width)
    cells = x_proj.new_empty(steps + 1, *rows, hidden)
    tanh_c = x_proj.new_empty(steps, *rows, hidden)
    cells[0] = c0
    h = h0
    for t in range(steps):
        pre = project_hidden(h, weight, x_proj[t], step_mask(z_h, t))
        a = acts[t]
        torch.sigmoid(pre, out=a)
        torch.tanh(pre[..., 2 * hidden : 3 * hidden], out=a[..., 2 * hidden : 3 * hidden])
        i, f, g, o = a.chunk(4, -1)
        c = torch.addcmul(f * cells[t], i, g, out=cells[t + 1])
        if z_c is not None:
            c.mul_(step_mask(z_c, t))
        torch.tanh(c, out=tanh_c[t])
        h = torch.mul(o, tanh_c[t], out=out[t])
    return out, acts, cells, tanh_c


def backward_steps(d_out, dh, dc, weight, acts, cells, tanh_c, z_h, z_c):
    """Gradients through the T steps, last to first. d_out (T, [S,] B, H); dh, dc ([S,] B, H)
    arriving from after the chunk. Returns d_pre (T, [S,] B, 4H) (the gradient of every gate's
    pre-activation), dh, dc of the initial state, and d_bias ([S,] 4H), the sum of d_pre over steps
    and rows. What does not depend on the gradient flowing back is computed for all steps at once,
    leaving few small kernels per step."""
    hidden = acts.shape[-1] // 4
    untied = z_h is not None and z_h.shape[-3] > 1
    per_gate = weight.unflatten(-2, (4, -1))  # ([S,] 4, H, H)
    i, f, g, o = acts.chunk(4, -1)
    slope = acts * (1 - acts)  # sigmoid' for i, f, o ...
    torch.mul(g, g, out=slope[..., 2 * hidden : 3 * hidden]).neg_().add_(1)  # ... and tanh' for g
    o_tanh_slope = o * (1 - tanh_c * tanh_c)  # d h_t / d c_t
    partner = torch.cat([g, cells[:-1], i], -1).unflatten(-1, (3, hidden))  # d c_t / d (i, f, g): g, c_{t-1}, i
    d_pre = torch.empty_like(acts)
    for t in range(acts.shape[0] - 1, -1, -1):
        dh_t = dh + d_out[t]
        dc_t = torch.addcmul(dc, dh_t, o_tanh_slope[t])
        if z_c is not None:
            dc_t.mul_(step_mask(z_c, t))
        dp = d_pre[t]
        torch.mul(partner[t], dc_t.unsqueeze(-2), out=dp[..., : 3 * hidden].unflatten(-1, (3, hidden)))
        torch.mul(dh_t, tanh_c[t], out=dp[..., 3 * hidden :])
        dp.mul_(slope[t])
        dc = dc_t * f[t]
        z = step_mask(z_h, t)
        if untied:  # d h = sum_k (dp_k W_k) * z_k
            dh = (torch.matmul(dp.unflatten(-1, (4, -1)).transpose(-3, -2), per_gate) * z).sum(-3)
        else:
            dh = torch.matmul(dp, weight)
            if z is not None:
                dh.mul_(z.select(-3, 0))
    return d_pre, dh, dc, d_pre.sum((0, -2))


def _compiled(tensor) -> bool:
    """Whether work on this tensor runs in the compiled CPU loops."""
    return not tensor.is_cuda and MaskedLSTM.use_compiled_cpu and lstm_cpu.available()


def runs_in_cpu_kernel(x, w_ih, w_hh) -> bool:
    """Whether the CPU build's AVX-512 kernel runs this layer whole (`lstm_cpu.runs_layer`)."""
    return _compiled(x) and lstm_cpu.runs_layer(x, w_ih, w_hh)


def _run(name, fn, compiled_fn, *tensors):
    """fn on the tensors: replayed as a CUDA graph on a GPU, the compiled loop on a CPU."""
    if tensors[0].is_cuda:
        if MaskedLSTM.use_cuda_graphs and not torch.cuda.is_current_stream_capturing():
            return cuda_graphs.replay(name, fn, *tensors)
    elif _compiled(tensors[0]):
        return compiled_fn(*tensors)
    return fn(*tensors)


def _gates(*masks) -> int:
    """4 where any mask is untied (one per gate), else 1."""
    return 4 if any(mask is not None and mask.shape[-3] > 1 for mask in masks) else 1


class MaskedLSTM(torch.autograd.Function):
    """The layer: x (T, [S,] B, I), z_x None or (T|1, [S,] G|1, B, I), W_ih ([S,] 4H, I), b_ih,
    and the recurrence's h0, c0, W_hh, b_hh, z_h, z_c.

    Where the CPU build's AVX-512 kernel runs the layer (`lstm_cpu.runs_layer`), it applies the
    masks inside its products and nothing masked is kept for the backward. Elsewhere the products
    run in MKL or cuBLAS, which take no masks: inputs and previous states, each masked as gate k
    sees them, share one buffer ([S,] G, T, B, I + H) = [x * z_x | h_{t-1} * z_h], so that the
    gradients of W_ih and W_hh come out of one product and b_ih and b_hh share one sum. One
    layer's forward + backward alone (2-core Xeon, batch 20, tied masks, MKL) went from 0.96x to
    1.04-1.06x the speed of oneDNN's fused LSTM at hidden 650, from 0.88x to 0.92x at 200."""

    use_cuda_graphs = True
    use_compiled_cpu = True

    @staticmethod
    def forward(ctx, x, z_x, h0, c0, w_ih, b_ih, w_hh, b_hh, z_h, z_c, backward_follows: bool):
        """backward_follows: grad mode was on at the call (what the backward reads is then kept)."""
        ctx.in_kernel = runs_in_cpu_kernel(x, w_ih, w_hh)
        # Both biases join the recurrence's per-step sum, where adding them costs no pass of its own.
        if ctx.in_kernel:
            x_proj = lstm_cpu.masked_projection(x, z_x, w_ih)
            out, acts, cells, tanh_c = lstm_cpu.forward_steps(x_proj, h0, c0, w_hh, b_ih + b_hh, z_h, z_c)
            inputs = x
        else:
            inputs, out, acts, cells, tanh_c = _forward_with_buffer(x, z_x, h0, c0, w_ih, w_hh, b_ih + b_hh, z_h, z_c, backward_follows)
        if backward_follows:
            ctx.save_for_backward(inputs, z_x, h0, w_ih, w_hh, out, acts, cells, tanh_c, z_h, z_c)
        return out, out[-1].clone(), cells[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        inputs, z_x, h0, w_ih, w_hh, out, acts, cells, tanh_c, z_h, z_c = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else d_out.contiguous()
        d_h = torch.zeros_like(h0) if d_h is None else d_h
        d_c = torch.zeros_like(h0) if d_c is None else d_c
        d_pre, dh, dc, d_bias = _run("lstm-backward", backward_steps, lstm_cpu.backward_steps, d_out, d_h, d_c, w_hh, acts, cells, tanh_c, z_h, z_c)
        if ctx.in_kernel:
            d_w_ih, d_w_hh = lstm_cpu.masked_weight_gradient(d_pre, inputs, z_x, h0, out, z_h)
            d_x = lstm_cpu.masked_input_gradient(d_pre, w_ih, z_x)
        else:
            d_x, d_w_ih, d_w_hh = _gradients_from_buffer(d_pre, inputs, z_x, w_ih, out.shape[0])
        return d_x, None, dh, dc, d_w_ih, d_bias, d_w_hh, d_bias, None, None, None


def _forward_with_buffer(x, z_x, h0, c0, w_ih, w_hh, bias, z_h, z_c, backward_follows):
    """The layer's forward where MKL or cuBLAS runs the products. Returns the buffer of masked
    inputs and states ([S,] G, T, B, I + H) (the states filled where a backward follows), out,
    acts, cells, tanh_c."""
    steps, *rows, inputs = x.shape
    masked = x.new_empty(*rows[:-1], _gates(z_x, z_h), steps, rows[-1], inputs + w_hh.shape[-1])
    x_proj = project_gate_major(gate_major_masked(x, z_x, out=masked[..., :inputs]), w_ih, None)
    # h_{t-1} * z_h for the backward: the compiled loop writes each as it computes it (0.18 ms of a
    # 3.5 ms layer forward at hidden 200 spent re-reading the outputs), elsewhere they are copied after.
    states = masked[..., inputs:] if backward_follows else None
    compiled_forward = functools.partial(lstm_cpu.forward_steps, states=states)
    out, acts, cells, tanh_c = _run("lstm-forward", forward_steps, compiled_forward, x_proj, h0, c0, w_hh, bias, z_h, z_c)
    if backward_follows and not _compiled(x):  # h0 for t = 0, the outputs after it
        first, rest = (None, None) if z_h is None else (z_h[:1], z_h[1:] if z_h.shape[0] > 1 else z_h)
        gate_major_masked(h0.unsqueeze(0), first, out=states[..., :1, :, :])
        gate_major_masked(out[:-1], rest, out=states[..., 1:, :, :])
    return masked, out, acts, cells, tanh_c


def _gradients_from_buffer(d_pre, masked, z_x, w_ih, steps):
    """The gradients of x, W_ih and W_hh from d_pre (T, [S,] B, 4H) and the buffer of
    `_forward_with_buffer`."""
    gates, inputs = masked.shape[-4], w_ih.shape[-1]
    d_gates = d_pre.unflatten(-1, (gates, -1))  # (T, [S,] B, G, 4H/G) -> ([S,] G, 4H/G, T*B)
    d_gates = (d_gates.permute(2, 3, 0, 1) if w_ih.dim() == 2 else d_gates.permute(1, 3, 4, 0, 2)).flatten(-2)
    d_weight = batched_matmul(d_gates, masked.flatten(-3, -2)).flatten(-3, -2)  # ([S,] 4H, I + H)
    d_x = batched_matmul(d_gates.transpose(-1, -2), w_ih.unflatten(-2, (gates, -1)))  # ([S,] G, T*B, I)
    d_x = d_x.unflatten(-2, (steps, masked.shape[-2]))
    if z_x is not None and _compiled(d_x):
        d_x = lstm_cpu.masked_gate_sum(d_x, z_x)
    else:
        if z_x is not None:
            d_x.mul_(z_x.movedim(0, -3))  # d_x is this product's own: no second (G, T, B, I) buffer
        d_x = (d_x.sum(-4) if gates > 1 else d_x.squeeze(-4)).movedim(-3, 0)
    return d_x, d_weight[..., :inputs], d_weight[..., inputs:]


def masked_lstm(x, z_x, h0, c0, w_ih, b_ih, w_hh, b_hh, z_h, z_c):
    """The layer as an autograd node: (out, h, c). Under bf16 autocast it still runs in float32:
    the cell state integrates over hundreds of steps, and its products are small next to the
    decoder's."""
    backward_follows = torch.is_grad_enabled()
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return MaskedLSTM.apply(x.float(), z_x, h0.float(), c0.float(), w_ih, b_ih, w_hh, b_hh, z_h, z_c, backward_follows)
    return MaskedLSTM.apply(x, z_x, h0, c0, w_ih, b_ih, w_hh, b_hh, z_h, z_c, backward_follows)
