"""A sampling job's records split over the processes of a run, and its appended output file the
same set of records whatever the number of processes, also across restarts that change it.

Ownership: record id -> process `owner(id, n)` (a hash of the id), so processes need not agree
on what is left to do: each one reads what is written, keeps the unfinished records it owns and
generates them. Writing: on one process the job appends to its output as always; with n > 1,
process p appends to `<output>.part<p>`. At the end (`finish`) every process waits at a
barrier, process 0 merges the output and every part file into the output, in the order of the
job's input (atomically), and removes the part files; a second barrier lets no process go on
before the merged file exists. A restart, with any number of processes, counts the records of
the output and of every part file as done, so a record is never generated twice or lost; a line
cut off by a crash (no final newline) is ignored and its record redone (a process trims it from
the file it appends to before appending). Sampling keys derive from (seed, record id)
(`sampling.record_keys`), so a record's sample does not depend on the process or batch that made it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from typing import Callable, Iterable, Sequence

from cai_jax.data.jsonl import DataError, append_jsonl, finished_ids
from cai_jax.sampling.record_keys import id_hash

_PART = re.compile(r"\.part(\d+)$")
# Tests of restarts set this to "NAME:N": a process then dies (exit code 75, no clean-up) right
# after its N-th append to the output named NAME, as a crash or preemption would leave it.
CRASH_ENV = "CAI_JAX_CRASH_AFTER_APPENDS"
CRASH_EXIT_CODE = 75


def owner(record_id: str, num_processes: int) -> int:
  """The process that generates `record_id` among `num_processes`."""
  return id_hash(record_id) % num_processes


def part_files(output: str) -> list[str]:
  """`<output>.part<p>` files, in process order."""
  found = [(int(m.group(1)), p) for p in glob.glob(glob.escape(output) + ".part*")
           if (m := _PART.search(p)) and p[:m.start()] == output]
  return [p for _, p in sorted(found)]


def _complete_lines(path: str) -> list[tuple[int, str]]:
  """(line number, line) of the lines that end with a newline; a last line cut off by a crash
  is left out (read only: another process may own the file)."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  if not data.endswith(b"\n"):
    data = data[:data.rfind(b"\n") + 1]
  return [(n, line) for n, line in enumerate(data.decode("utf-8").splitlines(), start=1)
          if line.strip()]


def _id_of(path: str, lineno: int, line: str) -> str:
  try:
    return str(json.loads(line)["id"])
  except (json.JSONDecodeError, KeyError, TypeError):
    raise DataError(f"{path}:{lineno}: not a record with an 'id'") from None


def written_ids(paths: Iterable[str]) -> set[str]:
  return {_id_of(p, n, line) for p in paths for n, line in _complete_lines(p)}


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (nothing on one process)."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def merge(output: str, order: Sequence[str]) -> int:
  """The output and its part files as one file: each id once (the first written wins), ids of
  `order` in that order, then any others in the order read; written atomically, then the part
  files are removed. Returns the number of records."""
  parts = part_files(output)
  lines: dict[str, str] = {}
  for path in [output] + parts:
    for n, line in _complete_lines(path):
      lines.setdefault(_id_of(path, n, line), line)
  rank = {rid: i for i, rid in enumerate(order)}
  ids = sorted(lines, key=lambda rid: (0, rank[rid]) if rid in rank else (1, 0))
  folder = os.path.dirname(os.path.abspath(output))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".merge-", suffix=".jsonl")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for rid in ids:
        f.write(lines[rid] + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, output)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  for path in parts:  # after the replace: a crash in between leaves duplicates, merged away later
    os.remove(path)
  return len(ids)


class SplitOutput:
  """One job's appended jsonl output as seen by one process of the run."""

  def __init__(self, output: str, name: str, *, process_index: int | None = None,
               process_count: int | None = None):
    import jax
    self.output = output
    self.name = name  # barrier names: unique per job and output
    self.index = jax.process_index() if process_index is None else process_index
    self.count = jax.process_count() if process_count is None else process_count
    self.path = output if self.count == 1 else f"{output}.part{self.index}"
    self.is_main = self.index == 0
    self.appends = 0
    crash_name, _, crash_after = os.environ.get(CRASH_ENV, "").rpartition(":")
    self.crash_after = int(crash_after) if crash_name == name else 0

  def finished_ids(self) -> set[str]:
    """Ids written by any run so far (the output and every part file). Trims a cut-off last line
    of the file this process appends to, so its next line starts clean."""
    done = finished_ids(self.path)
    return done | written_ids([p for p in [self.output] + part_files(self.output)
                               if p != self.path])

  def mine(self, items: Sequence, id_of: Callable = lambda r: r.id) -> list:
    """The items this process generates."""
    if self.count == 1:
      return list(items)
    return [x for x in items if owner(id_of(x), self.count) == self.index]

  def append(self, records: Sequence[dict]) -> None:
    append_jsonl(self.path, records)
    self.appends += 1
    if self.appends == self.crash_after:  # fault injection for restart tests
      print(f"{CRASH_ENV}: process {self.index} exits after {self.appends} appends to "
            f"{self.path}", flush=True)
      os._exit(CRASH_EXIT_CODE)

  def finish(self, order: Sequence[str]) -> None:
    """Every process has written its records: merge them into the output (process 0) and
    return when it is there. One process without part files leaves the output as it is."""
    barrier(f"{self.name}:written")
    if self.is_main and part_files(self.output):
      merge(self.output, order)
    barrier(f"{self.name}:merged")
