"""Word-level tokenizer for the in-pipeline mini-CLIP.

The demo world's captions and prompts use a small, fixed vocabulary, so a BPE
tokenizer would only waste context and embedding rows. Ids are fixed:
0 = <pad>, 1 = <sot>, 2 = <eot>, 3 = <unk>, vocabulary words from 4 on, in
the order of the vocabulary list, so the list alone (stored in the checkpoint)
rebuilds the same tokenizer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..io.atomic import write_text

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIALS = (PAD, SOT, EOT, UNK)

# A word is a run without spaces or sentence punctuation; punctuation marks are
# words of their own ("a photo of a cat." -> ... "cat", ".").
_WORD_RE = re.compile(r"[^\s.,;:!?]+|[.,;:!?]")


def split_words(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words, punctuation split off as its own word."""
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Map texts to fixed-length id tensors: ``<sot> words... <eot> <pad>...``.

    Unknown words become ``<unk>`` (counted in :meth:`count_unknown`, so a
    caller can warn about a vocabulary that does not cover its texts).
    Too-long texts are truncated but always keep their ``<eot>``, because the
    text tower pools at the ``<eot>`` position.
    """

    pad_id = 0
    sot_id = 1
    eot_id = 2
    unk_id = 3

    def __init__(self, vocab: Iterable[str], context_length: int = 16):
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (got {context_length})")
        words: list[str] = []
        seen: set[str] = set()
        for raw in vocab:
            w = raw.strip().lower()
            if not w or w in seen or w in SPECIALS:
                continue
            if _WORD_RE.fullmatch(w) is None:
                raise ValueError(f"vocabulary entry {raw!r} is not a single word")
            seen.add(w)
            words.append(w)
        self.vocab: list[str] = words
        self.context_length = int(context_length)
        self._ids = {w: i + len(SPECIALS) for i, w in enumerate(words)}
        self._words = list(SPECIALS) + words

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows the text tower needs (specials included)."""
        return len(self._words)

    def encode(self, text: str) -> list[int]:
        """Ids of one text without padding: ``[sot, w1, ..., eot]`` (truncated to context)."""
        ids = [self._ids.get(w, self.unk_id) for w in split_words(text)]
        ids = ids[: self.context_length - 2]
        return [self.sot_id, *ids, self.eot_id]

    def __call__(self, texts: str | list[str]) -> torch.LongTensor:
        """Tokenize a batch of texts to a ``B×context_length`` LongTensor, zero-padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Words of one id row between ``<sot>`` and ``<eot>`` (for logs and tests)."""
        words = []
        for i in list(map(int, ids)):
            if i == self.eot_id:
                break
            if i in (self.sot_id, self.pad_id):
                continue
            words.append(self._words[i] if 0 <= i < len(self._words) else UNK)
        return " ".join(words)

    def count_unknown(self, texts: Iterable[str]) -> dict[str, int]:
        """Words of ``texts`` that the vocabulary lacks, with their counts."""
        counts: dict[str, int] = {}
        for text in texts:
            for w in split_words(text):
                if w not in self._ids:
                    counts[w] = counts.get(w, 0) + 1
        return counts

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary, one word a line (specials are implicit)."""
        write_text(path, "".join(w + "\n" for w in self.vocab))

    @classmethod
    def load(cls, path: str | os.PathLike, context_length: int = 16) -> WordTokenizer:
        """Rebuild a tokenizer from a vocabulary file written by :meth:`save` (or the world's vocab.txt)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocabulary file not found")
        return cls(path.read_text().splitlines(), context_length)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
