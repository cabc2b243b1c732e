"""Zaremba, Sutskever & Vinyals 2014: dropout on the non-recurrent connections only.

    x_t^(l) <- x_t^(l) * m_t / (1-p)      every layer's input (embedding output, lower layer's h_t)
    y_t     <- h_t^(L) * m'_t / (1-p)     the top layer's output, before the softmax
    h_{t-1} is never masked; m_t, m'_t are new at every time step.
"""

from .base import STEP, Variant

VARIANT = Variant(
    name="zaremba",
    description="Zaremba et al. 2014: new mask every step on inputs and outputs, never on h_{t-1}",
    masks={"input": STEP, "output": STEP},
    p={"input": 0.5, "output": 0.5},
)
