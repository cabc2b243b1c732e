"""S language models of one shape trained as one population.

For an epoch, the members' parameters are stacked along a leading model dimension and every chunk
runs all S models at once: batched matrix products for the projections and the decoder, one
masked recurrence over (S, B) rows, one backward pass. Each member draws its masks from its own
generator in the order it would alone, and its gradient is clipped and applied with its own
learning rate and weight decay, so each ends the epoch with the weights it would have reached
alone, up to float rounding. Between epochs the members are ordinary `LanguageModel`s: validation,
early stopping, checkpoints and the final evaluation are each member's own (`train.py`).

Members may differ in variant, seed, dropout probabilities and schedule (lr, decay, clipping,
weight decay, epochs, early stopping); `population_key` says what they must share. Masks of
different variants are stacked by broadcasting: a member without a mask in a slot gets ones, a
per-sequence mask is repeated over the steps where another member's is per step, a tied mask over
the gates where another member's is untied; none of this changes a member's arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .lstm_kernel import masked_lstm
from .masks import ChunkMasks
from .precision import autocast

# Everything that fixes a model's shape, its training data stream and its arithmetic.
SHARED_KEYS = ("task", "cell", "hidden_size", "embedding_size", "num_layers", "bptt", "batch_size", "train_tokens",
               "device", "precision", "optimizer")


def population_key(config: dict, variant) -> Optional[tuple]:
    """The key trials must share to train as one population, or None for a trial that trains alone
    (sentiment, GRU, Adam, or a variant with its own cell step)."""
    if config["task"] != "ptb" or config["cell"] != "lstm" or config["optimizer"] != "sgd" or variant.cell_step is not None:
        return None
    return tuple(config[key] for key in SHARED_KEYS)


def stack_masks(masks: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    """Per-member masks (T|1, [G|1,] B, X), some None, -> (T', S, [G',] B, X) with the members'
    broadcast shape; None when no member has one."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    shape = torch.broadcast_shapes(*(m.shape for m in present))
    ones = present[0].new_ones(())
    return torch.stack([(ones if m is None else m).expand(shape) for m in masks], dim=1)


class Population:
    """The members' parameters stacked as (S, ...) leaf tensors, and the forward pass over them."""

    def __init__(self, members: list):
        self.members = members
        self.names = [name for name, _ in members[0].named_parameters()]
        self.params = {name: torch.stack([m.get_parameter(name).detach() for m in members]).requires_grad_() for name in self.names}

    def write_back(self):
        """Copy each member's slice of the stacked parameters into its own model."""
        with torch.no_grad():
            for k, member in enumerate(self.members):
                for name in self.names:
                    member.get_parameter(name).copy_(self.params[name][k])

    def initial_state(self, batch: int) -> list[tuple]:
        hidden, device = self.members[0].hidden_size, self.params["decoder.weight"].device
        zeros = torch.zeros(len(self.members), batch, hidden, device=device)
        return [(zeros, zeros.clone()) for _ in self.members[0].layers]

    def forward(self, tokens: torch.Tensor, state: list[tuple], masks: list[ChunkMasks]):
        """tokens: (T, B), the same for every member; masks: one ChunkMasks per member.
        Returns logits (S, T*B, V) in (t, b) order and the new state, per layer (h, c) each (S, B, H)."""
        p = self.params
        x = p["embedding.weight"][:, tokens].transpose(0, 1)  # (T, S, B, E)
        words = stack_masks([m.embedding for m in masks])  # (T, S, B)
        if words is not None:
            x = x * words.unsqueeze(-1)
        new_state = []
        for index, (h, c) in enumerate(state):
            layer = f"layers.{index}."
            x, h, c = masked_lstm(x, stack_masks([m.layers[index].input for m in masks]), h, c, p[layer + "weight_ih"], p[layer + "bias_ih"],
                                  p[layer + "weight_hh"], p[layer + "bias_hh"],
                                  stack_masks([m.layers[index].recurrent for m in masks]), stack_masks([m.layers[index].cell for m in masks]))
            new_state.append((h, c))
        output = stack_masks([m.output for m in masks])
        if output is not None:
            x = x * output
        steps, models, batch, hidden = x.shape
        top = x.transpose(0, 1).reshape(models, steps * batch, hidden)
        return torch.baddbmm(p["decoder.bias"].unsqueeze(1), top, p["decoder.weight"].transpose(1, 2)), new_state


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(S,) values shaped to broadcast against a stacked (S, ...) tensor."""
    return values.view(-1, *[1] * (like.dim() - 1))


def train_step(population: Population, x: torch.Tensor, y: torch.Tensor, masks: list[ChunkMasks], state: list[tuple],
               lr: torch.Tensor, max_norm: torch.Tensor, keep: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[tuple]]:
    """One SGD step of every member on the chunk x -> y (T, B). lr, max_norm (inf: no clipping) and
    keep (1 - decoupled weight decay; None: no member decays) are (S,). Returns the members' mean
    losses (S,) and the new state."""
    params = [population.params[name] for name in population.names]
    logits, state = population.forward(x, [(h.detach(), c.detach()) for h, c in state], masks)
    members = len(population.members)
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten().repeat(members), reduction="none").view(members, -1).mean(1)
    grads = torch.autograd.grad((losses * x.shape[0]).sum(), params)  # as alone: mean NLL per step, summed over steps
    with torch.no_grad():
        # clip_grad_norm_ per member: scale by max_norm / (norm + 1e-6) where that is below 1
        norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        step = (max_norm / (norm + 1e-6)).clamp(max=1.0) * lr
        for param, grad in zip(params, grads):
            param.addcmul_(grad, _per_member(step, grad), value=-1)
            if keep is not None:
                param.mul_(_per_member(keep, param))
    return losses.detach(), state


def train_epoch_together(trials: list, train: torch.Tensor, bar) -> list[tuple[float, int]]:
    """One epoch of truncated BPTT over `train` (N, B) for every trial (`train.LanguageModelTrial`)
    at once. Returns, per trial, (summed per-step loss, steps), as an epoch alone would."""
    config, device = trials[0].config, trials[0].device
    bptt, batch = config["bptt"], config["batch_size"]
    population = Population([t.model for t in trials])

    def per_member(values):
        return torch.tensor(values, device=device)

    lr = per_member([t.run["lr"] for t in trials])
    max_norm = per_member([t.config["max_grad_norm"] or float("inf") for t in trials])
    decays = any(t.config["weight_decay"] for t in trials)  # decoupled decay, not scaled by lr
    keep = per_member([1.0 - t.config["weight_decay"] for t in trials]) if decays else None
    state = population.initial_state(batch)
    loss_sum, steps = torch.zeros(len(trials), device=device), 0
    for start in range(0, train.shape[0] - 1, bptt):
        x = train[start : min(start + bptt, train.shape[0] - 1)]
        y = train[start + 1 : start + 1 + x.shape[0]]
        masks = [t.model.draw_masks(t.config, x, device, generator=t.generator) for t in trials]
        with autocast(config, device):
            losses, state = train_step(population, x, y, masks, state, lr, max_norm, keep)
        loss_sum += losses * x.shape[0]
        steps += x.shape[0]
        bar.tick()
    population.write_back()
    return [(loss, steps) for loss in loss_sum.tolist()]
