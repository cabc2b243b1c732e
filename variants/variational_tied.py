"""Gal & Ghahramani 2016, variational dropout with tied gate masks.

One mask per sequence, repeated at every time step, on inputs, recurrent connections, outputs and
word types; the same z_x and z_h feed all four gates:

    (i, f, g, o) = act((x_t * z_x) W_x + (h_{t-1} * z_h) W_h + b)
    y_t = h_t^(L) * z_o,    e(w) <- e(w) * z_E[w]
"""

from .base import SEQUENCE, Variant

VARIANT = Variant(
    name="variational-tied",
    description="Gal & Ghahramani 2016: one mask per sequence on inputs, h_{t-1}, outputs and word types; shared by all gates",
    masks={"embedding": SEQUENCE, "input": SEQUENCE, "recurrent": SEQUENCE, "output": SEQUENCE},
    p={"embedding": 0.2, "input": 0.35, "recurrent": 0.2, "output": 0.35},
    tied=True,
)
