"""Dropout variants: one file per variant, each a `Variant` declaring its mask slots."""

from .base import SEQUENCE, SLOTS, STEP, Variant, config_key
from .registry import get_variant, load_registry

__all__ = ["SEQUENCE", "SLOTS", "STEP", "Variant", "config_key", "get_variant", "load_registry"]
