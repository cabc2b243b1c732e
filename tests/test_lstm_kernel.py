"""The hand-written BPTT of the masked LSTM recurrence against autograd."""

import pytest
import torch

from dropbench.harness.cell import RecurrentLayer, lstm_step
from dropbench.harness.lstm_kernel import MaskedLSTM

T, B, H = 5, 3, 4


def masks(kind):
    torch.manual_seed(1)

    def bern(*shape):
        return (torch.rand(*shape, dtype=torch.double) > 0.4).double() / 0.6
    return {
        "none": (None, None),
        "tied per sequence": (bern(1, 1, B, H), None),
        "untied per sequence": (bern(1, 4, B, H), None),
        "per step": (bern(T, 1, B, H), None),
        "cell per sequence": (None, bern(1, B, H)),
        "everything": (bern(T, 4, B, H), bern(T, B, H)),
    }[kind]


KINDS = ["none", "tied per sequence", "untied per sequence", "per step", "cell per sequence", "everything"]


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    torch.manual_seed(0)
    z_h, z_c = masks(kind)
    inputs = [torch.randn(T, B, 4 * H, dtype=torch.double, requires_grad=True), torch.randn(B, H, dtype=torch.double, requires_grad=True),
              torch.randn(B, H, dtype=torch.double, requires_grad=True), torch.randn(4 * H, H, dtype=torch.double, requires_grad=True),
              torch.randn(4 * H, dtype=torch.double, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: MaskedLSTM.apply(*a, z_h, z_c), inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_equals_the_autograd_step_loop(kind):
    """The layer's kernel path against the same layer run through the generic step loop
    (a `cell_step` forces the loop), outputs and every gradient."""
    from dropbench.harness.masks import LayerMasks

    torch.manual_seed(0)
    layer = RecurrentLayer("lstm", 6, H).double()
    x = torch.randn(T, B, 6, dtype=torch.double)
    z_h, z_c = masks(kind)
    layer_masks = LayerMasks(input=None, recurrent=z_h, cell=z_c)

    def run(step):
        layer.zero_grad()
        out, (h, c) = layer(x, layer.initial_state(B), layer_masks, step)
        (out.sin().sum() + h.sum() + c.cos().sum()).backward()
        return [out, h, c] + [p.grad.clone() for p in layer.parameters()]

    for kernel, loop in zip(run(None), run(lstm_step)):
        torch.testing.assert_close(kernel, loop, rtol=1e-10, atol=1e-12)
