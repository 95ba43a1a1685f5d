"""Shape buckets: batch sizes and lengths rounded up to powers of two, so a run compiles a
handful of programs instead of one per distinct shape."""


def pow2_bucket(n: int, minimum: int) -> int:
  """The smallest power of two >= n, and at least `minimum`."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())
