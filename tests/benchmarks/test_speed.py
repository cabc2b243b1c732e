"""Microbenchmarks (pytest-benchmark), kept out of the regular test run (`--benchmark-skip` in
pyproject.toml). Run and compare against a saved baseline:

    pytest tests/benchmarks --benchmark-only --benchmark-save=before      # on main
    pytest tests/benchmarks --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=mean:10%

Timings land in .benchmarks/; no test here asserts on time.
"""

import pytest
import torch

from dropbench.harness.cell import RecurrentLayer
from dropbench.harness.evaluate import lm_target_logprobs
from dropbench.harness.models import LanguageModel
from dropbench.harness.population import Population, train_step
from dropbench.variants import load_registry

REGISTRY = load_registry()
BATCH, STEPS, HIDDEN = 20, 35, 200
PROBABILITIES = {"p_embedding": 0.2, "p_input": 0.35, "p_recurrent": 0.2, "p_cell": 0.2, "p_output": 0.35}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cell_forward_backward_per_variant(benchmark, name):
    """One layer, one BPTT chunk, forward and backward, with the variant's masks."""
    torch.manual_seed(0)
    model = LanguageModel(100, "lstm", HIDDEN, 1, REGISTRY[name])
    x = torch.randn(STEPS, BATCH, HIDDEN, requires_grad=True)
    layer: RecurrentLayer = model.layers[0]

    def step():
        masks = model.draw_masks(PROBABILITIES, torch.randint(0, 100, (STEPS, BATCH)), "cpu").layers[0]
        out, _ = layer(x, layer.initial_state(BATCH), masks, REGISTRY[name].cell_step)
        out.sum().backward()

    benchmark(step)


@pytest.mark.parametrize("samples", [1, 16, 64])
def test_mc_evaluation(benchmark, samples):
    """MC evaluation of a 1x200 variational LM over 500 tokens; compare samples=1 to see the batching gain."""
    torch.manual_seed(0)
    model = LanguageModel(10000, "lstm", HIDDEN, 1, REGISTRY["variational-tied"])
    stream = torch.randint(0, 10000, (500,))
    benchmark(lambda: lm_target_logprobs(model, stream, 1, STEPS, "cpu", PROBABILITIES, samples))


@pytest.mark.parametrize("models", [1, 2, 4, 8])
def test_population_train_step(benchmark, models):
    """One SGD step of S 1x200 variational LMs trained as one population; divide by S for the cost per model."""
    torch.manual_seed(0)
    members = [LanguageModel(10000, "lstm", HIDDEN, 1, REGISTRY["variational-tied"]) for _ in range(models)]
    population = Population(members)
    tokens = torch.randint(0, 10000, (STEPS + 1, BATCH))
    ones = torch.ones(models)

    def step():
        masks = [member.draw_masks(PROBABILITIES, tokens[:-1], "cpu") for member in members]
        train_step(population, tokens[:-1], tokens[1:], masks, population.initial_state(BATCH), ones * 0.1, ones * 5.0)

    benchmark(step)
