"""Evaluation: per-token log-loss of the language model and predictions of the sentiment
regressor, deterministic (no masks) or Monte Carlo (K masks, batched as K copies of every row).

MC averages probabilities, not log-probabilities (paper §1):
    log p̄(y) = log (1/K Σ_k p_k(y)) = logsumexp_k log p_k(y) - log K,   ppl = exp(-mean log p̄).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# MC copies are processed in groups so that logits (T, rows, V) stay within about 512 MB.
MAX_LOGIT_ELEMENTS = 2**27


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def batchify(stream: torch.Tensor, streams: int) -> torch.Tensor:
    """(N,) token ids -> (N // streams, streams): column b is the b-th contiguous piece of the stream."""
    length = stream.shape[0] // streams
    return stream[: length * streams].view(streams, length).t().contiguous()


@torch.no_grad()
def lm_target_logprobs(model, stream: torch.Tensor, streams: int, bptt: int, device, config: dict | None = None,
                       mc_samples: int = 0, draw=None, generator: torch.Generator | None = None):
    """Log-probability of every predicted token of `stream` (N,), read as `streams` contiguous
    streams with the state carried across chunks of `bptt` steps.

    Returns (logprob (M,), position (M,)): numpy arrays; position[i] is the index in `stream` of
    the i-th predicted token, in stream order. With mc_samples = K > 0: log p̄ over K stochastic
    passes run side by side as K copies of every stream. As in the authors' MC code, each pass
    holds one mask over its whole stream (per-step masks stay per step) and word-type embedding
    dropout is off; masks come from `generator` (default: the global one).
    `draw(tokens, keep) -> ChunkMasks` replaces the model's mask drawing (tests).
    """
    was_training = model.training
    model.eval()
    data = batchify(stream, streams).to(device)
    length = data.shape[0]
    samples = max(mc_samples, 1)
    per_group = max(1, min(samples, MAX_LOGIT_ELEMENTS // (bptt * model.vocab_size * streams))) if mc_samples else 1
    draw = draw or (lambda tokens, keep: model.draw_masks(config, tokens, device, embedding=False, keep=keep, generator=generator))
    total = None
    for first in range(0, samples, per_group):
        copies = min(per_group, samples - first)
        rows = data.repeat_interleave(copies, dim=1)  # row b*copies + j: stream b, sample j
        state = model.initial_state(rows.shape[1], device)
        pieces, held = [], None
        for start in range(0, length - 1, bptt):
            x = rows[start : min(start + bptt, length - 1)]
            y = rows[start + 1 : start + 1 + x.shape[0]]
            masks = None
            if mc_samples:
                masks = draw(x, held)
                held = held or masks
            logits, state = model(x, state, masks)
            logits = _at_least_float32(logits)  # under bf16 autocast the softmax runs in float32
            # log p(y) = logit_y - logsumexp(logits): no full log-softmax tensor is written
            logp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (T, rows)
            pieces.append(logp.view(x.shape[0], streams, copies).logsumexp(-1))
        group = torch.cat(pieces)  # (length - 1, streams): log Σ_j p_j over this group's copies
        total = group if total is None else torch.logaddexp(total, group)
    logprob = (total - math.log(samples)).t().reshape(-1)  # stream order
    positions = (torch.arange(streams).view(-1, 1) * length + torch.arange(1, length).view(1, -1)).reshape(-1)
    model.train(was_training)
    return logprob.double().cpu().numpy(), positions.numpy()


def per_sentence(logprob: np.ndarray, positions: np.ndarray, stream: torch.Tensor, eos_id: int):
    """Summed negative log-likelihood and token count per sentence (a sentence ends with <eos>).
    Returns (nll (S,), count (S,)) over the S sentences that have at least one predicted token."""
    sentence_of = np.concatenate([[0], np.cumsum(stream.numpy() == eos_id)[:-1]])[positions]
    sentences, index = np.unique(sentence_of, return_inverse=True)
    return np.bincount(index, weights=-logprob), np.bincount(index)


@torch.no_grad()
def sentiment_predictions(model, segments: torch.Tensor, batch_size: int, device, config: dict | None = None, mc_samples: int = 0) -> np.ndarray:
    """segments: (N, T). Returns (N,) predictions on the model's (standardised) scale; with
    mc_samples = K > 0 the mean prediction over K masks, each drawn per segment and copy."""
    was_training = model.training
    model.eval()
    copies = max(mc_samples, 1)
    rows = max(1, batch_size // copies) if mc_samples else batch_size
    out = []
    for start in range(0, segments.shape[0], rows):
        x = segments[start : start + rows].to(device).t().repeat_interleave(copies, dim=1)  # (T, rows * K)
        masks = model.draw_masks(config, x, device) if mc_samples else None
        out.append(_at_least_float32(model(x, masks)).view(-1, copies).mean(1))
    model.train(was_training)
    return torch.cat(out).double().cpu().numpy()
