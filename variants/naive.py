"""Naive recurrent dropout: the sentiment experiments' baseline (Gal & Ghahramani 2016, §4.2).
Standard dropout applied to the recurrent layer as to a feed-forward one, a new mask every step:

    gates = act((x_t * m_t) W_x + (h_{t-1} * m'_t) W_h + b),   y = h * m''_t
    m_t, m'_t, m''_t drawn afresh at every time step, shared by all gates
"""

from .base import STEP, Variant

VARIANT = Variant(
    name="naive",
    description="Naive dropout: new masks every step on inputs, recurrent connections and outputs",
    masks={"input": STEP, "recurrent": STEP, "output": STEP},
    p={"input": 0.5, "recurrent": 0.5, "output": 0.5},
)
