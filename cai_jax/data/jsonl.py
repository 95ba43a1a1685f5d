"""jsonl reading and writing with errors that name the file and line, and atomic outputs."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from typing import Any, Iterator


class DataError(ValueError):
  """Malformed input data; the message starts with `file:line:`."""


class StorageError(OSError):
  """An output could not be written (disk full, read-only or unwritable folder); the message
  starts with the file's path. What was written before stays valid: appended records end at the
  last whole line (a rerun trims a cut one), atomic outputs keep their previous version."""


def storage_error(path: str, e: OSError) -> StorageError:
  reason = e.strerror or str(e)
  return StorageError(e.errno, f"{path}: cannot write ({reason}); the outputs written so far "
                      "are kept: free space or fix the permissions and run the same command "
                      "again")


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str) -> bool:
  """Gzip is recognised by its magic bytes, not by the file name."""
  try:
    with open(path, "rb") as f:
      return f.read(2) == GZIP_MAGIC
  except OSError as e:
    raise DataError(f"{path}: cannot open ({e.strerror})") from e


def open_text(path: str):
  """The file as UTF-8 text, gunzipped when it is gzip."""
  if is_gzip(path):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) for every non-blank line of a plain or gzip jsonl file; a line that
  is not a JSON object, text that is not UTF-8 or a damaged gzip stream fails with file:line."""
  kind = "gzip text" if is_gzip(path) else "text"
  f = open_text(path)
  lineno = 0
  try:
    with f:
      for lineno, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
          raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
  except (OSError, EOFError) as e:
    raise DataError(f"{path}:{lineno + 1}: cannot read {kind} ({e})") from None


def require(obj: dict, field: str, kind, path: str, lineno: int):
  """obj[field], checked to be of `kind` (a type or tuple of types)."""
  if field not in obj:
    raise DataError(f"{path}:{lineno}: missing field {field!r}")
  value = obj[field]
  if not isinstance(value, kind):
    raise DataError(f"{path}:{lineno}: field {field!r} should be "
                    f"{getattr(kind, '__name__', kind)}, got {type(value).__name__}")
  return value


def write_text_atomic(path: str, text: str) -> None:
  """Write to a temporary file and rename: readers never see a half-written result, and a
  failed write (StorageError naming PATH) leaves the previous version in place."""
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and not isinstance(e, StorageError):
      raise storage_error(path, e) from e
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def write_jsonl_atomic(path: str, records) -> None:
  """One JSON line per record, written atomically (a whole output rebuilt at once)."""
  write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def finished_ids(path: str) -> set[str]:
  """Ids of the records an appending job already wrote to `path`. A last line cut off by a crash
  (no final newline) is dropped from the file first, so that record is redone, not lost."""
  if not os.path.exists(path):
    return set()
  with open(path, "rb") as f:
    data = f.read()
  keep = data if data.endswith(b"\n") or not data else data[:data.rfind(b"\n") + 1]
  if keep != data:
    with open(path, "wb") as f:
      f.write(keep)
  ids = set()
  for lineno, line in enumerate(keep.decode("utf-8").splitlines(), start=1):
    if line.strip():
      try:
        ids.add(str(json.loads(line)["id"]))
      except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}:{lineno}: not a record with an 'id'; refusing to append") from None
  return ids


def append_jsonl(path: str, records) -> None:
  """Appends one JSON line per record and fsyncs: a crash loses at most the line being written
  (which `finished_ids` drops and the job redoes)."""
  # One write call: a Python-level signal handler (the CLI's SIGTERM) runs between bytecodes,
  # never inside it, and the file's close flushes whole lines on the way out.
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write(lines)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise storage_error(path, e) from e
