"""Evaluation: MC averages probabilities (not log-probabilities), batching is invisible, and
per-sentence losses add up to the perplexity."""

import math

import numpy as np
import pytest
import torch

from dropbench.harness.evaluate import batchify, lm_target_logprobs, per_sentence
from dropbench.harness.models import LanguageModel


class FixedProbabilities(torch.nn.Module):
    """A stand-in model whose k-th MC copy predicts a given distribution, to check the averaging by hand."""

    def __init__(self, per_copy):
        super().__init__()
        self.per_copy = per_copy  # (K, V) probabilities
        self.vocab_size = per_copy.shape[1]

    def initial_state(self, batch, device=None):
        return []

    def draw_masks(self, config, tokens, device, embedding=True, keep=None, generator=None):
        return "masks"

    def forward(self, tokens, state, masks=None):
        steps, rows = tokens.shape
        probs = self.per_copy.repeat(rows // self.per_copy.shape[0], 1) if masks else self.per_copy[:1].repeat(rows, 1)
        return probs.log().unsqueeze(0).expand(steps, rows, -1), state


def test_mc_averages_probabilities_not_log_probabilities():
    # Two copies give the target token (id 1) probability 0.9 and 0.1: p̄ = 0.5, so ppl = 2 exactly.
    # Averaging log-probabilities instead would give exp(-(log .9 + log .1)/2) = 3.33.
    model = FixedProbabilities(torch.tensor([[0.1, 0.9], [0.9, 0.1]], dtype=torch.double))
    stream = torch.tensor([1, 1, 1, 1, 1])
    logprob, positions = lm_target_logprobs(model, stream, streams=1, bptt=2, device="cpu", config={}, mc_samples=2)
    assert np.exp(-logprob.mean()) == pytest.approx(2.0)
    assert positions.tolist() == [1, 2, 3, 4]


def test_batchify_makes_contiguous_streams():
    data = batchify(torch.arange(10), 3)
    assert data.t().tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_eval_in_streams_and_chunks_matches_a_direct_computation(registry):
    torch.manual_seed(0)
    model = LanguageModel(30, "lstm", 8, 1, registry["none"]).double()
    stream = torch.randint(0, 30, (41,))
    logprob, positions = lm_target_logprobs(model, stream, streams=2, bptt=7, device="cpu")
    # independent: each of the 2 streams (20 tokens) in one pass, log-softmax of the next token
    expected, expected_positions = [], []
    for b in range(2):
        piece = stream[b * 20 : (b + 1) * 20]
        with torch.no_grad():
            logits, _ = model(piece.view(-1, 1), model.initial_state(1))
        expected += logits[:-1, 0].log_softmax(-1).gather(1, piece[1:].view(-1, 1)).view(-1).tolist()
        expected_positions += list(range(b * 20 + 1, (b + 1) * 20))
    np.testing.assert_allclose(logprob, expected, rtol=1e-10)
    assert positions.tolist() == expected_positions


def test_mc_with_masks_differs_and_batching_of_copies_is_invisible(registry):
    torch.manual_seed(0)
    model = LanguageModel(30, "lstm", 8, 2, registry["variational-tied"])
    config = {"p_input": 0.5, "p_recurrent": 0.5, "p_output": 0.5, "p_embedding": 0.5}
    stream = torch.randint(0, 30, (60,))
    deterministic, _ = lm_target_logprobs(model, stream, 1, 10, "cpu")
    again, _ = lm_target_logprobs(model, stream, 1, 10, "cpu")
    np.testing.assert_array_equal(deterministic, again)  # no masks without MC
    mc, _ = lm_target_logprobs(model, stream, 1, 10, "cpu", config, mc_samples=4)
    assert not np.allclose(mc, deterministic)
    # one sample of MC with p = 0 equals the deterministic pass
    zero, _ = lm_target_logprobs(model, stream, 1, 10, "cpu", {k: 0.0 for k in config}, mc_samples=3)
    np.testing.assert_allclose(zero, deterministic, rtol=1e-5)


def test_per_sentence_losses_sum_to_the_total():
    eos = 0
    stream = torch.tensor([5, 6, 0, 7, 0, 8, 9, 9, 0])
    logprob = -np.arange(1, 9, dtype=float) / 10  # targets at positions 1..8
    nll, count = per_sentence(logprob, np.arange(1, 9), stream, eos)
    # sentences: [5 6 <eos>] -> targets at 1,2; [7 <eos>] -> 3,4; [8 9 9 <eos>] -> 5..8
    assert count.tolist() == [2, 2, 4]
    np.testing.assert_allclose(nll, [0.1 + 0.2, 0.3 + 0.4, 0.5 + 0.6 + 0.7 + 0.8])
    assert math.isclose(nll.sum() / count.sum(), -logprob.mean())


def _rows(masks, rows):
    """The masks of some batch rows: every mask has the batch in its second-to-last dimension."""
    from dropbench.harness.masks import ChunkMasks, LayerMasks

    def pick(mask):
        return None if mask is None else mask[..., rows, :]
    return ChunkMasks([LayerMasks(pick(l.input), pick(l.recurrent), pick(l.cell)) for l in masks.layers],
                      embedding=None if masks.embedding is None else masks.embedding[:, rows], output=pick(masks.output))


@pytest.mark.parametrize("name", ["variational-untied", "zaremba", "moon"])
def test_mc_with_k_samples_is_the_mean_of_k_single_sample_evaluations_with_the_same_masks(registry, name):
    torch.manual_seed(0)
    model = LanguageModel(30, "lstm", 8, 2, registry[name]).double()
    config = {"p_input": 0.5, "p_recurrent": 0.5, "p_output": 0.5, "p_cell": 0.5}
    stream = torch.randint(0, 30, (50,))
    drawn = []

    def record(tokens, keep):
        masks = model.draw_masks(config, tokens, "cpu", embedding=False, keep=keep)
        for layer in masks.layers:
            for slot in ("input", "recurrent", "cell"):
                if getattr(layer, slot) is not None:
                    setattr(layer, slot, getattr(layer, slot).double())
        masks.output = masks.output.double() if masks.output is not None else None
        drawn.append(masks)
        return masks

    samples = 4
    mc, _ = lm_target_logprobs(model, stream, 1, 8, "cpu", config, mc_samples=samples, draw=record)
    chunks = drawn[:]
    singles = []
    for k in range(samples):
        replay = iter(chunks)
        single, _ = lm_target_logprobs(model, stream, 1, 8, "cpu", config, mc_samples=1,
                                       draw=lambda tokens, keep: _rows(next(replay), slice(k, k + 1)))
        singles.append(single)
    expected = np.log(np.mean(np.exp(np.stack(singles)), axis=0))
    np.testing.assert_allclose(mc, expected, rtol=1e-10)
    if name == "variational-untied":  # one mask held over the whole stream, not redrawn per chunk
        assert all(c.layers[0].recurrent is chunks[0].layers[0].recurrent for c in chunks)
