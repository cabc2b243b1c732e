"""With every probability 0, each variant's model computes what torch.nn.LSTM / nn.GRU compute."""

import pytest
import torch

from dropbench.harness.models import LanguageModel

ZERO = {"p_embedding": 0.0, "p_input": 0.0, "p_recurrent": 0.0, "p_cell": 0.0, "p_output": 0.0}
BUILTINS = ["none", "zaremba", "moon", "moon-emb", "variational-tied", "variational-untied"]


def reference_stack(model, cell):
    ref_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    ref = ref_cls(model.embedding.embedding_dim, model.hidden_size, num_layers=len(model.layers)).double()
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{index}").copy_(getattr(layer, name))
    return ref


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", BUILTINS)
def test_zero_probabilities_reproduce_torch_nn(registry, name, cell):
    variant = registry[name]
    if "cell" in variant.masks and cell == "gru":
        with pytest.raises(ValueError, match="cell"):
            LanguageModel(50, cell, 8, 2, variant)
        return
    torch.manual_seed(0)
    model = LanguageModel(50, cell, 8, 2, variant, embedding_size=6).double()
    model.train()
    tokens = torch.randint(0, 50, (9, 3))
    masks = model.draw_masks(ZERO, tokens, "cpu")
    top, state = model.run_layers(tokens, model.initial_state(3), masks)
    ref_out, ref_state = reference_stack(model, cell)(model.embedding(tokens))
    torch.testing.assert_close(top, ref_out, rtol=0, atol=1e-12)
    h_n = ref_state[0] if cell == "lstm" else ref_state
    torch.testing.assert_close(torch.stack([s[0] for s in state]), h_n, rtol=0, atol=1e-12)
    if cell == "lstm":
        torch.testing.assert_close(torch.stack([s[1] for s in state]), ref_state[1], rtol=0, atol=1e-12)


def test_state_carried_across_chunks_equals_one_long_pass(registry):
    torch.manual_seed(0)
    model = LanguageModel(50, "lstm", 8, 2, registry["none"]).double()
    tokens = torch.randint(0, 50, (12, 2))
    whole, _ = model(tokens, model.initial_state(2))
    first, state = model(tokens[:5], model.initial_state(2))
    second, _ = model(tokens[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["none", "zaremba", "variational-tied"])
def test_fused_kernel_path_equals_the_step_loop(registry, name, cell, monkeypatch):
    """Variants whose masks leave the recurrence alone may run PyTorch's fused kernel; it must
    compute what the generic step loop computes, masks included, gradients included."""
    from dropbench.harness.cell import RecurrentLayer

    torch.manual_seed(0)
    model = LanguageModel(50, cell, 8, 2, registry[name]).double()
    tokens = torch.randint(0, 50, (9, 3))
    config = {"p_input": 0.5, "p_output": 0.5, "p_embedding": 0.3, "p_recurrent": 0.0}
    masks = model.draw_masks(config, tokens, "cpu")
    for layer in masks.layers:
        layer.input = None if layer.input is None else layer.input.double()
    masks.output = None if masks.output is None else masks.output.double()
    masks.embedding = None if masks.embedding is None else masks.embedding.double()

    def run(fused):
        monkeypatch.setattr(RecurrentLayer, "use_fused_kernel", fused)
        model.zero_grad()
        logits, state = model(tokens, model.initial_state(3), masks)
        logits.logsumexp(-1).sum().backward()
        return logits.detach(), [s.detach() for layer in state for s in layer], [p.grad.clone() for p in model.parameters()]

    fused, loop = run(True), run(False)
    for a, b in zip([fused[0], *fused[1], *fused[2]], [loop[0], *loop[1], *loop[2]]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
