"""CLIP backbones for the pipeline: an in-pipeline mini-CLIP or open_clip weights, frozen behind ClipBundle."""

from .bundle import ClipBundle, load_clip
from .mini import MINI_DEFAULTS, build_mini_clip, load_corpus, train_mini_clip
from .tokenizer import WordTokenizer
from .zeroshot import format_zeroshot, zeroshot_eval

__all__ = [
    "MINI_DEFAULTS",
    "ClipBundle",
    "WordTokenizer",
    "build_mini_clip",
    "format_zeroshot",
    "load_clip",
    "load_corpus",
    "train_mini_clip",
    "zeroshot_eval",
]
