"""Fitting token sequences to compiled shapes: power-of-two buckets (so a run compiles a handful
of programs instead of one per distinct shape) and the left-truncation policy for over-long
prompts."""


def pow2_bucket(n: int, minimum: int) -> int:
  """The smallest power of two >= n, and at least `minimum`."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def truncate_left(ids, limit: int, *, keep_first: bool) -> tuple[list[int], bool]:
  """At most `limit` ids, dropping the oldest; `keep_first` keeps ids[0] (BOS) in place.
  Returns (ids, whether anything was dropped): the shared over-long-prompt policy."""
  ids = list(ids)
  if len(ids) <= limit:
    return ids, False
  head = ids[:1] if keep_first else []
  return head + ids[len(ids) - (limit - len(head)):], True
