"""The masked LSTM layer's hand-written backward (input projection and BPTT) against autograd."""

import pytest
import torch

from dropbench.harness.cell import RecurrentLayer, lstm_step
from dropbench.harness.lstm_kernel import MaskedLSTM

T, B, I, H = 5, 3, 6, 4


def masks(kind):
    """(z_x, z_h, z_c) for the layer's input, recurrent and cell connections."""
    torch.manual_seed(1)

    def bern(*shape):
        return (torch.rand(*shape, dtype=torch.double) > 0.4).double() / 0.6
    return {
        "none": (None, None, None),
        "tied per sequence": (bern(1, 1, B, I), bern(1, 1, B, H), None),
        "untied per sequence": (bern(1, 4, B, I), bern(1, 4, B, H), None),
        "tied input, untied recurrent": (bern(1, 1, B, I), bern(1, 4, B, H), None),
        "untied input, tied recurrent": (bern(1, 4, B, I), bern(1, 1, B, H), None),
        "untied input, no recurrent": (bern(1, 4, B, I), None, None),
        "per step": (bern(T, 1, B, I), bern(T, 1, B, H), None),
        "cell per sequence": (None, None, bern(1, B, H)),
        "everything": (bern(T, 4, B, I), bern(T, 4, B, H), bern(T, B, H)),
    }[kind]


KINDS = ["none", "tied per sequence", "untied per sequence", "tied input, untied recurrent", "untied input, tied recurrent",
         "untied input, no recurrent", "per step", "cell per sequence", "everything"]


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    torch.manual_seed(0)
    z_x, z_h, z_c = masks(kind)

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)
    x, h0, c0, w_ih, b_ih, w_hh, b_hh = randn(T, B, I), randn(B, H), randn(B, H), randn(4 * H, I), randn(4 * H), randn(4 * H, H), randn(4 * H)
    assert torch.autograd.gradcheck(lambda x, h0, c0, w_ih, b_ih, w_hh, b_hh: MaskedLSTM.apply(x, z_x, h0, c0, w_ih, b_ih, w_hh, b_hh, z_h, z_c, True),
                                    [x, h0, c0, w_ih, b_ih, w_hh, b_hh])


@pytest.mark.parametrize("dtype, tolerance", [(torch.double, 1e-10), (torch.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_equals_the_autograd_step_loop(kind, dtype, tolerance):
    """The layer's kernel path against the same layer run through the generic step loop in
    float64 (a `cell_step` forces the loop), outputs and every gradient, the input's included. In
    float32 the CPU build runs its own products (`lstm_cpu.cpp`), input projection included."""
    from dropbench.harness.masks import LayerMasks

    torch.manual_seed(0)
    layer = RecurrentLayer("lstm", I, H).double()
    x = torch.randn(T, B, I, dtype=torch.double, requires_grad=True)
    layer_masks = LayerMasks(*masks(kind))

    def run(step, dtype):
        layer.to(dtype).zero_grad()
        x.grad = None
        cast = LayerMasks(*(None if z is None else z.to(dtype) for z in masks(kind)))
        out, (h, c) = layer(x.to(dtype), layer.initial_state(B), cast if dtype != torch.double else layer_masks, step)
        (out.sin().sum() + h.sum() + c.cos().sum()).backward()
        return [t.double() for t in [out, h, c, x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]]

    for kernel, loop in zip(run(None, dtype), run(lstm_step, torch.double)):
        torch.testing.assert_close(kernel, loop, rtol=tolerance, atol=tolerance)
