"""Numeric precision of a trial (`precision = fp32 | tf32 | bf16`): bf16 autocast must still train
(its weight cache may never outlive an optimizer step) and land near float32."""

import pytest
import torch

from dropbench.harness.config import TASK_DEFAULTS
from dropbench.harness.models import LanguageModel
from dropbench.harness.precision import autocast
from dropbench.harness.train import run_trial

TINY = {**TASK_DEFAULTS["ptb"], "device": "cpu", "hidden_size": 32, "epochs": 1, "train_tokens": 3000,
        "valid_tokens": 300, "test_tokens": 100, "init_scale": 0.05}


@pytest.mark.parametrize("name", ["zaremba", "variational-tied"])
def test_bf16_training_moves_the_weights_and_lands_near_float32(name, registry, data_dir):
    variant = registry[name]
    config = {**TINY, "variant": name, **{f"p_{slot}": p for slot, p in variant.p.items()}}
    ppl = {precision: run_trial({**config, "precision": precision}, variant, data_dir).metrics["val_ppl"] for precision in ("fp32", "bf16")}
    untrained = run_trial({**config, "precision": "bf16", "lr": 0.0}, variant, data_dir).metrics["val_ppl"]
    assert ppl["bf16"] < 0.5 * untrained  # stale autocast weights would leave it at the untrained value
    assert ppl["bf16"] == pytest.approx(ppl["fp32"], rel=0.02)


def test_the_masked_recurrence_stays_float32_under_bf16_autocast(registry):
    torch.manual_seed(0)
    model = LanguageModel(100, "lstm", 16, 1, registry["variational-tied"])
    tokens = torch.randint(0, 100, (5, 3))
    masks = model.draw_masks({"p_recurrent": 0.3, "p_cell": 0.0}, tokens, "cpu")
    with autocast({"precision": "bf16"}, torch.device("cpu")):
        top, state = model.run_layers(tokens, model.initial_state(3), masks)
        logits, _ = model(tokens, model.initial_state(3), masks)
    assert top.dtype == torch.float32 and state[0][1].dtype == torch.float32  # h and the cell state
    assert logits.dtype == torch.bfloat16
