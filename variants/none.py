"""No dropout. Regularised only by early stopping on validation perplexity (the paper's first row)."""

from .base import Variant

VARIANT = Variant(
    name="none",
    description="No dropout; early stopping on validation perplexity",
    early_stopping=True,
)
