"""The paper's reference numbers and setups (harness/paper_reference.toml), for results to be set
beside and for tests that check the paper suites resolve to the published hyperparameters."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

# paper value -> results column it is set beside
PAPER_COLUMNS = {"val": "paper_val_ppl", "test": "paper_test_ppl", "test_mc": "paper_test_ppl_mc", "wps": "paper_wps"}


@functools.lru_cache(maxsize=1)
def load_reference() -> dict:
    return tomllib.loads(resources.files("dropbench.harness").joinpath("paper_reference.toml").read_text())


def reference_columns() -> list[str]:
    """The table columns a suite experiment may name as its `reference`, e.g. 'ptb-medium'."""
    return [f"ptb-{size}" for size in load_reference()["ptb"]]


def setup(reference: str) -> dict:
    """The published hyperparameters of a reference column ('ptb-medium' -> {'hidden_size': 650, ...})."""
    task, size = reference.split("-", 1)
    return dict(load_reference()[task][size]["setup"])


def paper_values(reference: str, variant: str) -> dict:
    """{'paper_val_ppl': ..., 'paper_test_ppl': ..., ...} for a variant in a reference column;
    empty when the paper has no such row."""
    if not reference:
        return {}
    task, size = reference.split("-", 1)
    row = load_reference()[task][size]["rows"].get(variant, {})
    return {column: row[key] for key, column in PAPER_COLUMNS.items() if key in row}
