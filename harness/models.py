"""The two models of the paper, both built on `RecurrentLayer` and driven by a variant's masks.

LanguageModel (paper §2): embedding -> L recurrent layers -> linear -> softmax over the vocabulary.
SentimentRegressor (paper §3): embedding -> one recurrent layer -> dense to a scalar from the last state.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dropbench.variants import Variant

from .cell import GATES, RecurrentLayer
from .masks import ChunkMasks, draw_masks


class _Recurrent(nn.Module):
    """Embedding followed by a stack of recurrent layers, with the masks applied where they belong."""

    def __init__(self, vocab_size: int, embedding_size: int, cell: str, hidden_size: int, num_layers: int, variant: Variant):
        super().__init__()
        if "cell" in variant.masks and cell != "lstm":
            raise ValueError(f"variant {variant.name!r} masks the LSTM cell state; use cell = 'lstm'")
        if variant.cell_step is not None and cell != "lstm":
            raise ValueError(f"variant {variant.name!r} supplies its own LSTM step; use cell = 'lstm'")
        self.variant = variant
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        sizes = [embedding_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(RecurrentLayer(cell, size, hidden_size) for size in sizes)
        self.num_gates = GATES[cell]

    def init_uniform(self, scale: float):
        """All parameters ~ U(-scale, scale), as Zaremba et al. 2014 and the paper."""
        for param in self.parameters():
            nn.init.uniform_(param, -scale, scale)

    def initial_state(self, batch: int, device=None) -> list[tuple]:
        return [layer.initial_state(batch, device) for layer in self.layers]

    def draw_masks(self, config: dict, tokens: torch.Tensor, device, embedding: bool = True, keep: Optional[ChunkMasks] = None,
                   generator: Optional[torch.Generator] = None) -> ChunkMasks:
        """Masks for the chunk tokens (T, B) (see `masks.draw_masks`)."""
        return draw_masks(
            self.variant, config, tokens,
            input_sizes=[layer.input_size for layer in self.layers],
            hidden_size=self.hidden_size, num_gates=self.num_gates,
            device=device, embedding=embedding, keep=keep, generator=generator,
        )

    def run_layers(self, tokens: torch.Tensor, state: list[tuple], masks: Optional[ChunkMasks]):
        """tokens: (T, B). Returns the top layer's output (T, B, H) with output dropout applied, and the new state."""
        x = self.embedding(tokens)
        if masks is not None and masks.embedding is not None:
            x = x * masks.embedding.unsqueeze(-1)
        new_state = []
        for index, layer in enumerate(self.layers):
            x, layer_state = layer(x, state[index], masks.layers[index] if masks else None, self.variant.cell_step)
            new_state.append(layer_state)
        if masks is not None and masks.output is not None:
            x = x * masks.output
        return x, new_state


class LanguageModel(_Recurrent):
    def __init__(self, vocab_size: int, cell: str, hidden_size: int, num_layers: int, variant: Variant, embedding_size: Optional[int] = None):
        super().__init__(vocab_size, embedding_size or hidden_size, cell, hidden_size, num_layers, variant)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state: list[tuple], masks: Optional[ChunkMasks] = None):
        """tokens: (T, B). Returns logits (T, B, V) and the state after the chunk."""
        top, state = self.run_layers(tokens, state, masks)
        return self.decoder(top), state


class SentimentRegressor(_Recurrent):
    def __init__(self, vocab_size: int, cell: str, hidden_size: int, variant: Variant, embedding_size: int = 128):
        super().__init__(vocab_size, embedding_size, cell, hidden_size, 1, variant)
        self.dense = nn.Linear(hidden_size, 1)

    def forward(self, tokens: torch.Tensor, masks: Optional[ChunkMasks] = None) -> torch.Tensor:
        """tokens: (T, B) pre-padded segments. Returns (B,) predictions from the last state."""
        top, _ = self.run_layers(tokens, self.initial_state(tokens.shape[1], tokens.device), masks)
        return self.dense(top[-1]).squeeze(-1)
