"""What a dropout variant is: which mask slots it uses, how often each mask is drawn, and how much.

A variant is data, not code. The one generic recurrent cell (`dropbench.harness.cell`) reads it:

    slot          config key     where the mask multiplies
    embedding     p_embedding    the embedding vector of a word type (whole vector zeroed)
    input         p_input        x_t of every layer: embedding output, lower layer's h_t
    recurrent     p_recurrent    h_{t-1} where it enters the gates
    cell          p_cell         the LSTM cell state c_t
    output        p_output       the top layer's h_t before the decoder

Each used slot is drawn either once per time step (STEP) or once per sequence (SEQUENCE) and is
independent across batch rows. `tied=False` draws one input and one recurrent mask per gate
instead of one shared by all gates. All masks are inverted dropout: kept units are scaled by
1/(1-p), so evaluation without masks needs no rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

STEP = "step"
SEQUENCE = "sequence"
SLOTS = ("embedding", "input", "recurrent", "cell", "output")


def config_key(slot: str) -> str:
    """The trial-config key that holds a slot's dropout probability, e.g. 'p_input'."""
    return f"p_{slot}"


@dataclass(frozen=True)
class Variant:
    """A dropout variant.

    masks: slot -> STEP or SEQUENCE, for the slots the variant uses; others stay unmasked.
    p: default probability per used slot (suites and --set override them).
    tied: one input/recurrent mask shared by all gates (True) or one per gate (False).
    early_stopping: train with early stopping on validation perplexity (the unregularised row).
    cell_step: optional replacement of the LSTM step for variants that are not a masking pattern
        of the standard cell; see `dropbench.harness.cell.lstm_step` for its signature.
    """

    name: str
    description: str
    masks: Mapping[str, str] = field(default_factory=dict)
    p: Mapping[str, float] = field(default_factory=dict)
    tied: bool = True
    early_stopping: bool = False
    cell_step: Optional[Callable] = None
    source: str = "built-in"

    def __post_init__(self):
        for slot, schedule in self.masks.items():
            if slot not in SLOTS:
                raise ValueError(f"variant {self.name!r}: unknown mask slot {slot!r}; slots are {', '.join(SLOTS)}")
            if schedule not in (STEP, SEQUENCE):
                raise ValueError(f"variant {self.name!r}: slot {slot!r} must be drawn per 'step' or 'sequence', not {schedule!r}")
        for slot in self.p:
            if slot not in self.masks:
                raise ValueError(f"variant {self.name!r}: probability given for unused slot {slot!r}")

    @property
    def stochastic(self) -> bool:
        """Whether the variant draws any mask, i.e. whether MC evaluation means anything."""
        return bool(self.masks)
