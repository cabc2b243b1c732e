"""Gal & Ghahramani 2016, variational dropout with one mask per gate ("untied weights").

Each gate k in {i, f, g, o} has its own per-sequence masks:

    gate_k = act((x_t * z_x^k) W_x^k + (h_{t-1} * z_h^k) W_h^k + b_k)
    y_t = h_t^(L) * z_o,    e(w) <- e(w) * z_E[w]
"""

from .base import SEQUENCE, Variant

VARIANT = Variant(
    name="variational-untied",
    description="Gal & Ghahramani 2016: per-sequence masks as variational-tied, but one input and one recurrent mask per gate",
    masks={"embedding": SEQUENCE, "input": SEQUENCE, "recurrent": SEQUENCE, "output": SEQUENCE},
    p={"embedding": 0.2, "input": 0.35, "recurrent": 0.2, "output": 0.35},
    tied=False,
)
