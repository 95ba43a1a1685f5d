"""Held-out splits of a stage's own outputs (SL revisions, AI-labelled pairs), so that a trainer
reports a loss on examples it never saw.

The split ranks the items by a hash of (salt, id) and holds out the `round(fraction x n)` lowest
(at least one when the fraction is positive and there are two or more items): an exact count,
which matters for the quickstart's handful of records, and the same split on every machine and
rerun for the same ids. Items that share an id (one prompt's records) fall on the same side.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def _rank(salt: str, key: str) -> bytes:
  return hashlib.sha256(f"{salt}:{key}".encode("utf-8")).digest()


def held_out_ids(ids: Sequence[str], fraction: float, salt: str) -> set[str]:
  """The ids held out: round(fraction x distinct ids) of them (>= 1 when fraction > 0 and there
  are at least 2), chosen by hash."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
  distinct = sorted(set(ids))
  if fraction == 0.0 or len(distinct) < 2:
    return set()
  n = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
  return set(sorted(distinct, key=lambda k: _rank(salt, k))[:n])


def split(items: Sequence[T], key: Callable[[T], str], fraction: float, salt: str
          ) -> tuple[list[T], list[T]]:
  """(kept for training, held out), each in the input order."""
  out = held_out_ids([key(x) for x in items], fraction, salt)
  return [x for x in items if key(x) not in out], [x for x in items if key(x) in out]
