"""Population training: S models trained as one must end where each would alone (exactly, in
float64), whatever their variants, seeds and schedules, also when resumed out of step."""

import pytest
import torch

from dropbench.harness.cell import RecurrentLayer
from dropbench.harness.config import TASK_DEFAULTS, Trial
from dropbench.harness.population import stack_masks
from dropbench.harness.run import populations
from dropbench.harness.train import Progress, run_population, run_trial

BASE = {**TASK_DEFAULTS["ptb"], "device": "cpu", "hidden_size": 16, "epochs": 2, "train_tokens": 2500, "valid_tokens": 300,
        "test_tokens": 200, "init_scale": 0.1, "lr_decay_start": 1}
# Schedules differ per member: lr, decay, clipping (0 = none), weight decay, epochs, early stopping.
SCHEDULES = [{"lr": 1.0}, {"lr": 0.5, "lr_decay": 1.5}, {"max_grad_norm": 0.0}, {"max_grad_norm": 0.5, "weight_decay": 1e-3},
             {"epochs": 3}, {"lr_decay_start": 0}, {"epochs": 3, "lr": 2.0}]


@pytest.fixture
def float64_masked_kernel():
    """float64 makes 'equal up to rounding' testable as equal; the population always runs the
    masked recurrence, so the lone trials do too (fused = masked is tested in test_cell.py)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    RecurrentLayer.use_fused_kernel = False
    yield
    torch.set_default_dtype(dtype)
    RecurrentLayer.use_fused_kernel = True


def member_configs(registry):
    names = ["none", "zaremba", "moon", "moon-emb", "variational-tied", "variational-untied", "naive"]
    configs = []
    for seed, (name, schedule) in enumerate(zip(names, SCHEDULES), start=1):
        variant = registry[name]
        configs.append({**BASE, "variant": name, "seed": seed, "mc_samples": 2 if variant.stochastic else 0,
                        **{f"p_{slot}": p for slot, p in variant.p.items()}, **schedule})
    configs[0]["early_stopping_patience"] = 1
    return configs


def run_together(configs, registry, data_dir, checkpoints=None):
    return run_population(configs, [registry[c["variant"]] for c in configs], data_dir, checkpoints or [None] * len(configs),
                          [Progress() for _ in configs], Progress())


def assert_same(alone, together):
    assert together.status == alone.status == "done"
    for key in ("epochs_run", "val_ppl", "test_ppl", "test_ppl_mc"):
        if key in alone.metrics:
            assert together.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-9), key
    for kind, (losses, counts) in alone.sample_losses.items():
        assert together.sample_losses[kind][0] == pytest.approx(losses, rel=1e-9)


def test_a_population_of_every_variant_ends_where_each_would_alone(registry, data_dir, float64_masked_kernel):
    configs = member_configs(registry)
    alone = [run_trial(c, registry[c["variant"]], data_dir) for c in configs]
    together = run_together(configs, registry, data_dir)
    for a, b in zip(alone, together):
        assert_same(a, b)
    assert len({round(a.metrics["val_ppl"], 6) for a in alone}) == len(alone)  # the members really differ


def test_members_resumed_an_epoch_apart_catch_up_and_still_match(registry, data_dir, tmp_path, float64_masked_kernel):
    configs = member_configs(registry)[3:6]
    alone = [run_trial(c, registry[c["variant"]], data_dir) for c in configs]
    checkpoints = [tmp_path / f"{k}.pt" for k in range(len(configs))]
    run_trial({**configs[0], "epochs": 1}, registry[configs[0]["variant"]], data_dir, checkpoints[0])  # an epoch ahead
    saved = torch.load(checkpoints[0], weights_only=True)
    saved["run"]["epoch"], saved["run"]["wall_s"] = 1, 0.0
    torch.save(saved, checkpoints[0])
    together = run_together(configs, registry, data_dir, checkpoints)
    for a, b in zip(alone, together):
        assert_same(a, b)


def test_masks_of_different_variants_stack_by_broadcasting():
    per_step = torch.rand(5, 4, 3, 2)  # untied, per step
    per_sequence = torch.rand(1, 1, 3, 2)  # tied, once per sequence
    stacked = stack_masks([per_step, None, per_sequence])
    assert stacked.shape == (5, 3, 4, 3, 2)
    assert torch.equal(stacked[:, 0], per_step)
    assert torch.equal(stacked[:, 1], torch.ones(5, 4, 3, 2))
    assert torch.equal(stacked[:, 2], per_sequence.expand(5, 4, 3, 2))
    assert stack_masks([None, None]) is None


def test_trials_are_grouped_by_shape_up_to_the_population_size(registry):
    def trial(variant, **config):
        return Trial("s", {**BASE, "variant": variant, **config})

    trials = [trial("zaremba", seed=1), trial("moon", seed=1), trial("zaremba", hidden_size=32), trial("zaremba", seed=2),
              trial("none", seed=3), Trial("s", {**TASK_DEFAULTS["sentiment"], "variant": "none"})]
    groups = populations(trials, registry, size=3)
    assert [[trials.index(t) for t in g] for g in groups] == [[0, 1, 3], [2], [4], [5]]
    assert all(len(g) == 1 for g in populations(trials, registry, size=1))
