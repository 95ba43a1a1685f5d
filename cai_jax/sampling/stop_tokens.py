"""Which tokens may complete a stop string: lets the decode loop stop exactly, on device.

Stop strings are text, and the same text can be tokenized many ways, so only the host can say
whether a row's text holds one. But a stop string is completed by the token that brings its
last character, and that token's own text holds that character, unless the character is split
over several byte tokens (a lone byte of a multi-byte character decodes to U+FFFD) or is
whitespace that a lone piece may drop when decoded (SentencePiece strips the leading space of
a text). So a decode loop can end at the first step where any row emits a token of that set,
the host checks those rows exactly, and rows that did stop leave their slot at once instead of
at the end of a chunk of steps. Tokens outside the set never end a loop, so results are the
same as checking after every step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

REPLACEMENT = "\ufffd"  # what a lone byte of a multi-byte character decodes to


def token_texts(tokenizer, vocab_size: int) -> list[str | None]:
  """Each id's text decoded on its own (None for ids the tokenizer does not have; a tokenizer
  without `vocab_size` is asked for every id of the model's vocabulary)."""
  known = min(vocab_size, getattr(tokenizer, "vocab_size", vocab_size))  # 262,144 ids: ~0.6 s
  return [tokenizer.decode([i]) for i in range(known)] + [None] * (vocab_size - known)


def may_complete(texts: Sequence[str | None], stop: Sequence[str]) -> np.ndarray | None:
  """[V] bool: token v may complete one of the `stop` strings; None when the rule does not
  apply (a stop string ending in whitespace), and the host must check every row instead."""
  last = {s[-1] for s in stop}
  if not last or any(c.isspace() for c in last):
    return None
  out = np.ones(len(texts), bool)
  for v, text in enumerate(texts):
    if text and REPLACEMENT not in text:
      out[v] = any(c in text for c in last)
  return out
