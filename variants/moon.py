"""Moon et al. 2015 (RNNDrop): one mask on the LSTM cell state, held for the whole sequence.

    c_t = m * (f_t * c_{t-1} + i_t * g_t) / (1-p_c)     m drawn once per sequence
    plus Zaremba-style per-step dropout on inputs and outputs (Gal & Ghahramani 2016, Table 1).
"""

from .base import SEQUENCE, STEP, Variant

VARIANT = Variant(
    name="moon",
    description="Moon et al. 2015 (RNNDrop): one cell-state mask per sequence, per-step input/output dropout",
    masks={"cell": SEQUENCE, "input": STEP, "output": STEP},
    p={"cell": 0.2, "input": 0.5, "output": 0.5},
)
