"""What a suite costs before it runs: token-steps and floating-point operations per trial, turned
into hours with a throughput measured on this machine in the same call.

FLOPs per token of a forward pass, counting multiply-adds as 2:
    2 * (sum over layers of G*H*(I + H)  +  H*V)        G = 4 (LSTM) or 3 (GRU), V = output size
and a training step costs about 3 forward passes (forward + backward).
"""

from __future__ import annotations

import time

import torch

# Token counts of the data sets (../shared/data/README.md; sentiment: 13,249 segments of 200 tokens).
PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
PTB_VOCAB = 10_000
SENTIMENT_SEGMENTS = {"train": 10_599, "test": 2_650}
SENTIMENT_TOKENS_PER_SEGMENT = 200
SENTIMENT_VOCAB = 20_000

# Sustained training rate dropbench reached on one GPU, with its defaults there (float32,
# populations of 8): 182,340 words/s in all for 8 variational-tied 2x650 models on an NVIDIA H200,
# 2026-11-26 (docs/perf.md), at 3 x 26.52 MFLOP per token. Not re-measured by `dropbench suites`.
GPU_FLOPS = 182_340 * 3 * 26.52e6
GPU_RATE_SOURCE = "measured on an H200 on 2026-11-26 (population of 8, 2x650, float32; docs/perf.md)"


def forward_flops_per_token(config: dict) -> float:
    gates = 4 if config["cell"] == "lstm" else 3
    hidden = config["hidden_size"]
    size = config["embedding_size"] or hidden
    recurrent = 0
    for _ in range(config["num_layers"]):
        recurrent += gates * hidden * (size + hidden)
        size = hidden
    output = hidden * (PTB_VOCAB if config["task"] == "ptb" else 1)
    return 2.0 * (recurrent + output)


def trial_cost(config: dict) -> tuple[float, float]:
    """(token-steps, FLOPs) of one trial: training, per-epoch evaluation, final test and MC passes."""
    epochs = config["epochs"]
    if config["task"] == "ptb":
        train = min(config["train_tokens"] or PTB_TOKENS["train"], PTB_TOKENS["train"])
        valid = min(config["valid_tokens"] or PTB_TOKENS["valid"], PTB_TOKENS["valid"])
        test = min(config["test_tokens"] or PTB_TOKENS["test"], PTB_TOKENS["test"])
        trained, evaluated = epochs * train, epochs * valid + test * (1 + config["mc_samples"])
    else:
        per = SENTIMENT_TOKENS_PER_SEGMENT
        train = min(config["train_segments"] or SENTIMENT_SEGMENTS["train"], SENTIMENT_SEGMENTS["train"]) * per
        test = min(config["test_segments"] or SENTIMENT_SEGMENTS["test"], SENTIMENT_SEGMENTS["test"]) * per
        trained = epochs * train
        evaluated = epochs * test * (1 + config["mc_samples_per_epoch"]) + test * (1 + config["mc_samples"])
    flops = forward_flops_per_token(config) * (3 * trained + evaluated)
    return trained + evaluated, flops


def measure_cpu_flops(seconds: float = 1.5) -> float:
    """Sustained FLOP/s of training a 2x200 LSTM language model here (a few real SGD steps)."""
    from dropbench.variants import load_registry

    from .models import LanguageModel

    config = {"task": "ptb", "cell": "lstm", "hidden_size": 200, "embedding_size": 0, "num_layers": 2}
    model = LanguageModel(PTB_VOCAB, "lstm", 200, 2, load_registry()["none"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, PTB_VOCAB, (36, 20))

    def step():
        logits, _ = model(tokens[:-1], model.initial_state(20))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - started
    return steps * 35 * 20 * 3 * forward_flops_per_token(config) / elapsed
