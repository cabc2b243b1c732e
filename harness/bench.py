"""`dropbench bench`: training and evaluation speed of every registered variant beside a
`torch.nn.LSTM` baseline (cuDNN on GPU, oneDNN on CPU) at the same size, in one process.

Measurements are interleaved: round r times one training step and one evaluation step of every
model, in an order shuffled anew each round, before round r+1 starts. A model's ratio to the
baseline is the median over rounds of
(baseline's time in round r) / (model's time in round r), so drift of the machine (turbo, other
load) cancels within each pair; the quartiles of those per-round ratios are reported beside it as
the run's resolution. Words per second come from each model's median step. On a shared 2-core
machine, the fastest of 5 rounds of 3 steps (the former estimator) read 0.99-1.05x for two
identical baselines, the paired median of 30-45 single-step rounds 1.00-1.03x.
Words per second count target tokens (batch x steps). FLOPs per token follow `cost.py`; the
matmul peak is measured in the same run with the decoder's own matrix shape.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cost import PTB_VOCAB, forward_flops_per_token
from .errors import DropbenchError
from .evaluate import lm_target_logprobs
from .models import LanguageModel
from .population import Population, train_step

SIZES = {"small": (200, 2), "medium": (650, 2), "large": (1500, 2)}
BASELINE = "baseline-nn.LSTM"
BATCH, STEPS = 20, 35
POPULATION_VARIANT, POPULATION_SIZES = "variational-tied", (1, 2, 4, 8)


def parse_size(text: str) -> tuple[int, int]:
    """'medium' -> (650, 2); '256x1' -> (256, 1)."""
    if text in SIZES:
        return SIZES[text]
    hidden, sep, layers = text.partition("x")
    if sep and hidden.isdigit() and layers.isdigit() and int(hidden) > 0 and int(layers) > 0:
        return int(hidden), int(layers)
    raise DropbenchError(f"--size {text!r} is not small, medium, large or HxL (e.g. 256x2)")


class BaselineLM(nn.Module):
    """Embedding -> torch.nn.LSTM -> linear: the fused-kernel reference, no dropout."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(PTB_VOCAB, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers)
        self.decoder = nn.Linear(hidden, PTB_VOCAB)

    def forward(self, tokens):
        out, _ = self.rnn(self.embedding(tokens))
        return self.decoder(out)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(device, fn) -> float:
    """Seconds one call of fn takes, queued GPU work included."""
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _timed(device, fn, repeats: int) -> float:
    """Seconds per call of fn, after one warm-up call."""
    fn()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - started) / repeats


def _probabilities(variant) -> dict:
    return {f"p_{slot}": p for slot, p in variant.p.items()}


def matmul_peak(device, hidden: int) -> float:
    """FLOP/s of the decoder-shaped product (BATCH*STEPS x hidden) @ (hidden x vocab), measured now."""
    a = torch.randn(BATCH * STEPS, hidden, device=device)
    b = torch.randn(hidden, PTB_VOCAB, device=device)
    seconds = _timed(device, lambda: a @ b, 20)
    return 2 * BATCH * STEPS * hidden * PTB_VOCAB / seconds


def paired_ratio(baseline_seconds, model_seconds) -> dict:
    """baseline_seconds, model_seconds: (R,) times of one step in each of R interleaved rounds.
    Returns the median over rounds of baseline / model (> 1: the model is faster) and its quartiles."""
    ratios = np.asarray(baseline_seconds) / np.asarray(model_seconds)
    low, median, high = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "quartiles": [float(low), float(high)]}


def run_bench(registry: dict, device: torch.device, hidden: int, layers: int, rounds: int = 20,
              mc_samples: int = 32, mc_tokens: int = 100 * BATCH, progress=None) -> dict:
    torch.manual_seed(0)
    tokens = torch.randint(0, PTB_VOCAB, (STEPS + 1, BATCH), device=device)
    x, y = tokens[:-1], tokens[1:]
    models = {name: LanguageModel(PTB_VOCAB, "lstm", hidden, layers, variant).to(device) for name, variant in registry.items()}
    models[BASELINE] = BaselineLM(hidden, layers).to(device)

    def train_alone(name):
        model = models[name]
        if name == BASELINE:
            logits = model(x)
        else:
            masks = model.draw_masks(_probabilities(model.variant), x, device)
            logits, _ = model(x, model.initial_state(BATCH, device), masks)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(param.grad, alpha=-0.01)

    @torch.no_grad()
    def eval_step(name):
        model = models[name]
        if name == BASELINE:
            model(x)
        else:
            model(x, model.initial_state(BATCH, device))

    for name in models:  # warm-up: allocator, first-call dispatch, the compiled recurrence's load
        for _ in range(2):
            train_alone(name)
            eval_step(name)
    train, evaluation = {name: [] for name in models}, {name: [] for name in models}
    order, shuffler = list(models), random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(order)  # a fixed order would hand each model the same predecessor every round
        for name in order:
            train[name].append(_seconds(device, lambda: train_alone(name)))
            evaluation[name].append(_seconds(device, lambda: eval_step(name)))
            if progress:
                progress()

    stream = torch.randint(0, PTB_VOCAB, (mc_tokens,))
    flops = forward_flops_per_token({"task": "ptb", "cell": "lstm", "hidden_size": hidden, "embedding_size": 0, "num_layers": layers})
    peak = matmul_peak(device, hidden)
    rows = []
    for name in models:
        row = {"variant": name, "train_wps": BATCH * STEPS / float(np.median(train[name])),
               "eval_wps": BATCH * STEPS / float(np.median(evaluation[name])),
               "train_step_seconds": train[name], "eval_step_seconds": evaluation[name]}
        row["train_flops_fraction_of_peak"] = row["train_wps"] * 3 * flops / peak
        if name != BASELINE and models[name].variant.stochastic:
            model, config = models[name], _probabilities(models[name].variant)
            deterministic = _timed(device, lambda: lm_target_logprobs(model, stream, BATCH, STEPS, device), 1)
            monte_carlo = _timed(device, lambda: lm_target_logprobs(model, stream, BATCH, STEPS, device, config, mc_samples), 1)
            row["mc_samples_wps"] = mc_samples * (mc_tokens - BATCH) / monte_carlo
            row["mc_cost_in_deterministic_passes"] = monte_carlo / deterministic
        rows.append(row)
    rows_alone = {row["variant"]: row for row in rows}
    population = population_throughput(registry, device, hidden, layers) if POPULATION_VARIANT in registry else []
    for row in population:
        row["ratio_to_alone"] = row["train_wps"] / rows_alone[POPULATION_VARIANT]["train_wps"]
    for row in rows:
        for kind in ("train", "eval"):
            ratio = paired_ratio(train[BASELINE] if kind == "train" else evaluation[BASELINE], row[f"{kind}_step_seconds"])
            row[f"{kind}_ratio_to_baseline"], row[f"{kind}_ratio_quartiles"] = ratio["median"], ratio["quartiles"]
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "hidden_size": hidden, "num_layers": layers,
            "batch_size": BATCH, "bptt": STEPS, "rounds": rounds, "mc_samples": mc_samples,
            "flops_per_token_forward": flops, "matmul_peak_flops": peak, "rows": rows, "population": population}


def population_throughput(registry: dict, device: torch.device, hidden: int, layers: int, rounds: int = 5, repeats: int = 3,
                          sizes=POPULATION_SIZES) -> list[dict]:
    """Training words/s (all members together) of S models of `POPULATION_VARIANT` trained as one
    population (`population.train_step`), per S in `sizes`; rounds interleave the sizes."""
    tokens = torch.randint(0, PTB_VOCAB, (STEPS + 1, BATCH), device=device)
    x, y = tokens[:-1], tokens[1:]
    variant = registry[POPULATION_VARIANT]
    config = _probabilities(variant)
    setups = {}
    for size in sizes:
        members = [LanguageModel(PTB_VOCAB, "lstm", hidden, layers, variant).to(device) for _ in range(size)]
        per_member = torch.ones(size, device=device)
        setups[size] = (Population(members), per_member * 0.01, per_member * 5.0)

    def step(size):
        population, lr, max_norm = setups[size]
        masks = [member.draw_masks(config, x, device) for member in population.members]
        train_step(population, x, y, masks, population.initial_state(BATCH), lr, max_norm)

    wps = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            wps[size].append(size * BATCH * STEPS / _timed(device, lambda: step(size), repeats))
    return [{"variant": POPULATION_VARIANT, "models": size, "train_wps": max(wps[size])} for size in sizes]
