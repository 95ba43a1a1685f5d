"""The progress bar every job and trainer shows (tqdm on stderr, at most one refresh a second)."""

from __future__ import annotations

import sys


def progress(total: int, desc: str, unit: str):
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0)
