"""Draws the dropout masks a variant asks for, for one chunk of T steps and B batch rows.

Shapes (a leading 1 broadcasts one per-sequence mask over all T steps; G is the gate count for
untied variants, 1 when tied):
    input      (T|1, G|1, B, I)   per layer, I = that layer's input size
    recurrent  (T|1, G|1, B, H)   per layer
    cell       (T|1, B, H)        per layer
    output     (T|1, B, H)        top layer only
    embedding  word-type table (B, V) when drawn per sequence, per-token (T, B) when per step
Every batch row gets its own draw. All masks are inverted dropout: entries are 0 or 1/(1-p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from dropbench.variants import SEQUENCE, Variant, config_key


def bernoulli_mask(shape, p: float, device) -> torch.Tensor:
    """Entries 0 with probability p, else 1/(1-p)."""
    return torch.empty(shape, device=device).bernoulli_(1.0 - p).div_(1.0 - p)


@dataclass
class LayerMasks:
    input: Optional[torch.Tensor] = None
    recurrent: Optional[torch.Tensor] = None
    cell: Optional[torch.Tensor] = None


@dataclass
class ChunkMasks:
    layers: list[LayerMasks]
    embedding: Optional[torch.Tensor] = None
    output: Optional[torch.Tensor] = None

    def embedding_scale(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """(T, B, 1) multiplier of each token's embedding, or None. tokens: (T, B)."""
        if self.embedding is None:
            return None
        if self.embedding.dim() == 2 and self.embedding.shape == tokens.shape:
            per_token = self.embedding
        else:  # word-type table: every occurrence of a word in row b shares the draw table[b, word]
            per_token = self.embedding.gather(1, tokens.t()).t()
        return per_token.unsqueeze(-1)


def draw_masks(
    variant: Variant,
    config: dict,
    steps: int,
    batch: int,
    input_sizes: list[int],
    hidden_size: int,
    num_gates: int,
    vocab_size: int,
    device,
    embedding: bool = True,
) -> ChunkMasks:
    """Masks for one chunk. `config` supplies the probabilities (p_input, ...); a slot whose
    probability is 0 gets no mask. `embedding=False` leaves word-type dropout out (MC evaluation)."""

    def p_of(slot):
        return float(config.get(config_key(slot), 0.0)) if slot in variant.masks else 0.0

    def time_dim(slot):
        return 1 if variant.masks[slot] == SEQUENCE else steps

    gates = 1 if variant.tied else num_gates
    layers = []
    for input_size in input_sizes:
        layer = LayerMasks()
        if p_of("input") > 0:
            layer.input = bernoulli_mask((time_dim("input"), gates, batch, input_size), p_of("input"), device)
        if p_of("recurrent") > 0:
            layer.recurrent = bernoulli_mask((time_dim("recurrent"), gates, batch, hidden_size), p_of("recurrent"), device)
        if p_of("cell") > 0:
            layer.cell = bernoulli_mask((time_dim("cell"), batch, hidden_size), p_of("cell"), device)
        layers.append(layer)
    masks = ChunkMasks(layers=layers)
    if p_of("output") > 0:
        masks.output = bernoulli_mask((time_dim("output"), batch, hidden_size), p_of("output"), device)
    if embedding and p_of("embedding") > 0:
        shape = (batch, vocab_size) if variant.masks["embedding"] == SEQUENCE else (steps, batch)
        masks.embedding = bernoulli_mask(shape, p_of("embedding"), device)
    return masks
