"""Moon et al. 2015 plus word-type embedding dropout: the paper's 'Moon et al. + emb dropout' row.

    e(w) <- e(w) * z_w / (1-p_E)     z_w drawn once per (sequence, word type): every occurrence of
                                     a dropped word in the sequence loses its whole embedding
"""

from .base import SEQUENCE, STEP, Variant

VARIANT = Variant(
    name="moon-emb",
    description="Moon et al. 2015 plus word-type embedding dropout (one draw per word type per sequence)",
    masks={"embedding": SEQUENCE, "cell": SEQUENCE, "input": STEP, "output": STEP},
    p={"embedding": 0.2, "cell": 0.2, "input": 0.5, "output": 0.5},
)
