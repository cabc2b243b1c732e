"""Mask semantics of every built-in variant, checked on the masks drawn and on what the cell
computes with them (against an independent float64 implementation of the paper's equations)."""

import pytest
import torch

from dropbench.harness.cell import RecurrentLayer
from dropbench.harness.masks import draw_masks
from dropbench.harness.models import LanguageModel

STEPS, BATCH, INPUT, HIDDEN, VOCAB = 7, 6, 5, 4, 9
P = {"p_embedding": 0.5, "p_input": 0.5, "p_recurrent": 0.5, "p_cell": 0.5, "p_output": 0.5}


def draw(variant, steps=STEPS, batch=BATCH, config=P, layers=2, tokens=None):
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (steps, batch)) if tokens is None else tokens
    return draw_masks(variant, config, tokens, [INPUT] + [HIDDEN] * (layers - 1), HIDDEN, 4, "cpu")


def per_step(mask, steps=STEPS):
    """A (T|1, ...) mask as the (T, ...) masks the cell applies at each step."""
    return mask.expand(steps, *mask.shape[1:])


def rows_differ(mask, row_dim):
    rows = mask.movedim(row_dim, 0).flatten(1)
    return any(not torch.equal(rows[0], rows[b]) for b in range(1, rows.shape[0]))


def steps_differ(mask):
    return any(not torch.equal(mask[0], mask[t]) for t in range(1, mask.shape[0]))


@pytest.mark.parametrize("name", ["variational-tied", "variational-untied"])
def test_variational_masks_repeat_over_time_and_differ_across_sequences(registry, name):
    masks = draw(registry[name])
    for layer in masks.layers:
        for mask in (layer.input, layer.recurrent):
            full = per_step(mask)
            assert all(torch.equal(full[0], full[t]) for t in range(STEPS))
            assert rows_differ(full[0], row_dim=1)  # (G, B, size): rows are batch entries
    assert rows_differ(per_step(masks.output)[0], row_dim=0)
    again = draw_masks(registry[name], P, torch.randint(0, VOCAB, (STEPS, BATCH)), [INPUT, HIDDEN], HIDDEN, 4, "cpu")
    assert not torch.equal(again.layers[0].recurrent, masks.layers[0].recurrent)  # a new draw for the next sequence


def test_zaremba_masks_change_every_step_and_never_touch_the_recurrent_connection(registry):
    masks = draw(registry["zaremba"])
    for layer in masks.layers:
        assert layer.input.shape[0] == STEPS and steps_differ(layer.input)
        assert layer.recurrent is None and layer.cell is None
    assert masks.output.shape[0] == STEPS and steps_differ(masks.output)
    assert masks.embedding is None


def test_tied_shares_one_mask_across_gates_untied_draws_one_per_gate(registry):
    tied, untied = draw(registry["variational-tied"]), draw(registry["variational-untied"])
    assert tied.layers[0].recurrent.shape[1] == 1 and tied.layers[0].input.shape[1] == 1
    assert untied.layers[0].recurrent.shape[1] == 4 and untied.layers[0].input.shape[1] == 4
    gates = untied.layers[0].recurrent[0]
    assert any(not torch.equal(gates[0], gates[k]) for k in range(1, 4))


@pytest.mark.parametrize("name", ["moon", "moon-emb"])
def test_moon_cell_mask_is_constant_over_time_and_inputs_are_per_step(registry, name):
    masks = draw(registry[name])
    for layer in masks.layers:
        cell = per_step(layer.cell)
        assert all(torch.equal(cell[0], cell[t]) for t in range(STEPS))
        assert rows_differ(cell[0], row_dim=0)
        assert layer.input.shape[0] == STEPS and layer.recurrent is None


@pytest.mark.parametrize("name", ["moon-emb", "variational-tied", "variational-untied"])
def test_word_type_dropout_drops_every_occurrence_of_a_word_in_a_sequence(registry, name):
    torch.manual_seed(1)
    tokens = torch.randint(0, 3, (40, BATCH))  # few types, many repeats
    scale = draw(registry[name], steps=40, tokens=tokens).embedding  # (T, B)
    assert scale.shape == tokens.shape
    per_row_and_word = {}
    for b in range(BATCH):
        for word in tokens[:, b].unique():
            values = scale[tokens[:, b] == word, b]
            assert torch.all(values == values[0])
            per_row_and_word[b, int(word)] = float(values[0])
    assert set(per_row_and_word.values()) == {0.0, 2.0}  # p = 0.5: dropped or scaled by 1/(1-p)
    for word in range(3):  # rows draw independently: a word is dropped in some rows and kept in others
        assert len({v for (b, w), v in per_row_and_word.items() if w == word}) == 2


def test_word_type_dropout_drops_each_word_type_with_probability_p(registry):
    # 4000 rows, each one word repeated 6 times and one other once: a per-token draw would drop
    # the repeated word's 6 tokens independently; per type they share one draw.
    tokens = torch.cat([torch.full((6, 4000), 7), torch.full((1, 4000), 3)])
    scale = draw(registry["variational-tied"], steps=7, batch=4000, config={**P, "p_embedding": 0.3}, tokens=tokens).embedding
    assert torch.equal(scale[:6], scale[:1].expand(6, -1))
    for row in (scale[0], scale[6]):
        assert (row == 0).float().mean().item() == pytest.approx(0.3, abs=0.025)  # sd 0.007
    assert ((scale[0] == 0) & (scale[6] == 0)).float().mean().item() == pytest.approx(0.09, abs=0.02)  # independent types


def test_mask_values_are_inverted_dropout_with_the_requested_rate(registry):
    config = {**P, "p_recurrent": 0.3}
    masks = draw_masks(registry["variational-untied"], config, torch.zeros(1, 4000, dtype=torch.long), [INPUT], 50, 4, "cpu")
    values = masks.layers[0].recurrent
    assert values.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (values == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_zero_probability_draws_no_mask_and_unused_slots_stay_empty(registry):
    masks = draw(registry["variational-tied"], config={k: 0.0 for k in P})
    assert masks.embedding is None and masks.output is None
    assert all(l.input is None and l.recurrent is None and l.cell is None for l in masks.layers)
    none = draw(registry["none"])
    assert none.embedding is None and none.output is None and all(l.input is None for l in none.layers)


def reference_lstm(x, w_ih, w_hh, b_ih, b_hh, z_x, z_h, z_c):
    """The paper's equations, written out per gate: gate_k = act((x_t*z_x^k) W_x^k + (h*z_h^k) W_h^k + b_k),
    c_t = z_c * (f c + i g), h = o tanh(c). z_x: (T, 4, B, I), z_h: (T, 4, B, H), z_c: (T, B, H)."""
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    h = torch.zeros(batch, hidden, dtype=x.dtype)
    c = torch.zeros(batch, hidden, dtype=x.dtype)
    out = []
    for t in range(steps):
        gate = []
        for k in range(4):
            rows = slice(k * hidden, (k + 1) * hidden)
            pre = (x[t] * z_x[t, k]) @ w_ih[rows].T + (h * z_h[t, k]) @ w_hh[rows].T + b_ih[rows] + b_hh[rows]
            gate.append(torch.tanh(pre) if k == 2 else torch.sigmoid(pre))
        i, f, g, o = gate
        c = z_c[t] * (f * c + i * g)
        h = o * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["zaremba", "moon", "variational-tied", "variational-untied"])
def test_cell_applies_the_masks_as_the_equations_say(registry, name):
    variant = registry[name]
    torch.manual_seed(3)
    layer = RecurrentLayer("lstm", INPUT, HIDDEN).double()
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.double)
    masks = draw(variant, layers=1).layers[0]
    out, _ = layer(x, tuple(s.double() for s in layer.initial_state(BATCH)), masks)

    def full(mask, shape):
        if mask is None:
            return torch.ones(shape, dtype=torch.double)
        mask = mask.double()
        mask = mask if mask.dim() == len(shape) else mask.unsqueeze(1)
        return mask.expand(shape)

    z_x = full(masks.input, (STEPS, 4, BATCH, INPUT))
    z_h = full(masks.recurrent, (STEPS, 4, BATCH, HIDDEN))
    z_c = full(masks.cell, (STEPS, BATCH, HIDDEN))
    expected = reference_lstm(x, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, z_x, z_h, z_c)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_the_cell_output_depends_on_the_masks(registry):
    """Guards the test above: with other masks the output must change."""
    torch.manual_seed(3)
    layer = RecurrentLayer("lstm", INPUT, HIDDEN)
    x = torch.randn(STEPS, BATCH, INPUT)
    state = layer.initial_state(BATCH)
    a, _ = layer(x, state, draw(registry["variational-untied"], layers=1).layers[0])
    b, _ = layer(x, state)
    assert not torch.allclose(a, b)


def test_model_output_dropout_hits_the_top_layer_only(registry):
    torch.manual_seed(0)
    model = LanguageModel(VOCAB, "lstm", HIDDEN, 2, registry["variational-tied"]).double()
    tokens = torch.randint(0, VOCAB, (STEPS, BATCH))
    masks = model.draw_masks({"p_output": 0.5}, tokens, "cpu")
    masks.output = masks.output.double()
    assert all(l.input is None for l in masks.layers)
    logits, _ = model(tokens, model.initial_state(BATCH), masks)
    top, _ = model.run_layers(tokens, model.initial_state(BATCH), None)
    torch.testing.assert_close(logits, model.decoder(top * masks.output))


def test_a_variant_may_supply_its_own_cell_step():
    """Semeniuta et al. 2016 drop the candidate g instead of the cell: c = f c + i (m g). It reuses the
    cell slot's per-sequence mask through a custom step."""
    from dropbench.variants import SEQUENCE, Variant

    def semeniuta_step(x_proj, h, c, recurrent, cell_mask):
        i, f, g, o = (x_proj + recurrent(h)).chunk(4, 1)
        g = torch.tanh(g) * (cell_mask if cell_mask is not None else 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * g
        return torch.sigmoid(o) * torch.tanh(c), c

    variant = Variant(name="semeniuta", description="mask on g", masks={"cell": SEQUENCE}, p={"cell": 0.5}, cell_step=semeniuta_step)
    torch.manual_seed(0)
    model = LanguageModel(VOCAB, "lstm", HIDDEN, 1, variant).double()
    tokens = torch.randint(0, VOCAB, (STEPS, BATCH))
    masks = model.draw_masks({"p_cell": 0.5}, tokens, "cpu")
    z_c = masks.layers[0].cell = masks.layers[0].cell.double()
    top, _ = model.run_layers(tokens, model.initial_state(BATCH), masks)
    layer, x = model.layers[0], model.embedding(tokens)
    h = c = torch.zeros(BATCH, HIDDEN, dtype=torch.double)
    for t in range(STEPS):
        gates = x[t] @ layer.weight_ih.T + h @ layer.weight_hh.T + layer.bias_ih + layer.bias_hh
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * (z_c[0] * torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        torch.testing.assert_close(top[t], h)
