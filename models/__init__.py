"""Model cards and preprocessing specs, as data (the lowest layer: no framework, no I/O beyond package data)."""

from xfverify.models.cards import ModelCard, find_cards, get_card, load_cards
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS, PreprocessSpec, resolve_preprocess

__all__ = [
    "ModelCard",
    "PRESETS",
    "PreprocessSpec",
    "UserError",
    "find_cards",
    "get_card",
    "load_cards",
    "resolve_preprocess",
]
