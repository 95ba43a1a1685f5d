"""Readers for prompt data: cai_jax's own prompt sets, HH-RLHF comparisons, red-team attempts.

Everything here returns plain frozen dataclasses and reads local files only. Malformed input
stops with a `DataError` whose message starts with `file:line:` (the line where the offending
record starts), raised while reading, before any compute is spent.

Formats
- Prompt sets (ours, and any file in the same schema): jsonl, one `{"id", "prompt"}` per line,
  `"category"` optional, any further fields kept as metadata. The prompt is an HH conversation
  that starts with `"\\n\\nHuman:"`, alternates Human / Assistant turns and ends with
  `"\\n\\nAssistant:"` (the model's turn comes next). Ids are unique within a file.
- HH-RLHF comparisons (anthropics/hh-rlhf `*/train.jsonl.gz`, `*/test.jsonl.gz`): jsonl (plain
  or gzip) of `{"chosen": transcript, "rejected": transcript}`. Each transcript is split at its
  LAST `"\\n\\nAssistant:"`: what comes before, marker included, is the prompt, what follows is
  the reply (leading space kept, as in the file). Both transcripts must give the same prompt.
- Red-team attempts (anthropics/hh-rlhf `red-team-attempts/red_team_attempts.jsonl.gz`): despite
  its name the released file is ONE JSON array of objects (`transcript`, `rating`,
  `task_description`, `tags`, `min_harmlessness_score_transcript`, ...); a jsonl file with one
  such object per line is read too, plain or gzip (gzip is recognised by its magic bytes, not
  the file name). See `read_red_team_attempts` for where the prompt is cut.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from importlib import resources
from typing import Any, Iterable, Iterator

from cai_jax.data.conversation import ASSISTANT, HUMAN, parse
from cai_jax.data.jsonl import DataError, open_text, read_jsonl, require

PROMPT_SETS = ("red_team", "helpful")
SPLITS = ("train", "test")
TEST_BUCKETS = 10
_WS = re.compile(r"[ \t\r\n]*")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """One prompt: `prompt` is an HH conversation ending with "\\n\\nAssistant:"."""
  id: str
  prompt: str
  category: str | None = None
  source: str = ""                 # prompt-set name or file path it came from
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One HH-RLHF pair: the shared `prompt` (up to and including the last "\\n\\nAssistant:") and
  the two final replies (text after that marker, leading space as in the file)."""
  id: str
  prompt: str
  chosen: str
  rejected: str
  source: str = ""


# ---------------------------------------------------------------------------------------------
# low-level reading


def _read_text(path: str, limit: int = -1) -> str:
  """The file's text (gunzipped when gzip), or its first `limit` characters."""
  try:
    with open_text(path) as f:
      return f.read(limit)
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read ({e})") from None


def _starts_with_array(path: str) -> bool:
  head = _read_text(path, 1 << 16).lstrip()
  return head.startswith("[")


def _iter_json_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line where the record starts, object) from a JSON array file or a jsonl file."""
  if not _starts_with_array(path):
    yield from read_jsonl(path)
    return
  text = _read_text(path)
  pos = _WS.match(text, 0).end()
  decoder = json.JSONDecoder()
  line, line_pos = 1, 0

  def line_at(p: int) -> int:
    nonlocal line, line_pos
    line += text.count("\n", line_pos, p)
    line_pos = p
    return line

  pos = _WS.match(text, pos + 1).end()
  index = 0
  while True:
    if pos >= len(text):
      raise DataError(f"{path}:{line_at(len(text))}: the JSON array is not closed")
    if text[pos] == "]":
      break
    if index > 0:
      if text[pos] != ",":
        raise DataError(f"{path}:{line_at(pos)}: expected ',' or ']' after record {index}")
      pos = _WS.match(text, pos + 1).end()
    try:
      obj, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    index += 1
    lineno = line_at(pos)
    if not isinstance(obj, dict):
      raise DataError(f"{path}:{lineno}: array element {index} should be a JSON object, "
                      f"got {type(obj).__name__}")
    yield lineno, obj
    pos = _WS.match(text, end).end()
  rest = _WS.match(text, pos + 1).end()
  if rest != len(text):
    raise DataError(f"{path}:{line_at(rest)}: unexpected text after the JSON array")


def _default_prefix(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".gz", ".jsonl", ".json"):
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  return name or "record"


def _record_id(obj: dict, path: str, lineno: int) -> str:
  rid = require(obj, "id", (str, int), path, lineno)
  if isinstance(rid, bool) or not str(rid).strip():
    raise DataError(f"{path}:{lineno}: field 'id' is empty")
  return str(rid)


# ---------------------------------------------------------------------------------------------
# our prompt sets (and files in their schema)


def split_for(key: str) -> str:
  """'test' for about one key in ten, 'train' otherwise (a hash of the key: the same on every
  machine and run, and stable when prompts are added)."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return "test" if int.from_bytes(digest[:8], "big") % TEST_BUCKETS == 0 else "train"


def load_prompt_set(name_or_path: str | os.PathLike) -> list[PromptRecord]:
  """'red_team' / 'helpful' (shipped with the package; `NAME:train` / `NAME:test` for the
  held-out split of `split_for`, ~90% / ~10% of the ids: the training stages default to :train,
  the evaluation to :test) or a path to a jsonl (plain or gzip) of
  `{"id", "prompt", "category"?, ...}`. Fails with file:line on a missing or empty id or prompt,
  a duplicate id, a prompt that is not an HH conversation ending with "\\n\\nAssistant:", or a
  category that is not a non-empty string; fields beyond these go to `metadata`."""
  name_or_path = os.fspath(name_or_path)
  name, _, split = name_or_path.partition(":")
  if name in PROMPT_SETS and (not split or split in SPLITS):
    ref = resources.files("cai_jax.data.prompts").joinpath(f"{name}.jsonl")
    with resources.as_file(ref) as path:
      records = _read_prompt_file(os.fspath(path), source=name_or_path)
    return [r for r in records if split_for(r.id) == split] if split else records
  if not os.path.exists(name_or_path):
    raise DataError(f"{name_or_path}: no such file, and not a built-in prompt set "
                    f"({', '.join(PROMPT_SETS)}, each also as NAME:train / NAME:test)")
  return _read_prompt_file(name_or_path, source=name_or_path)


def check_hh_prompt(prompt: str) -> None:
  """Raises ValueError unless `prompt` is "\\n\\nHuman: ..." with alternating turns, ending in
  "\\n\\nAssistant:" (nothing after it) and with a non-blank last Human turn."""
  if not prompt.strip():
    raise ValueError("is empty")
  if not prompt.startswith(HUMAN):
    raise ValueError("should start with '\\n\\nHuman:'")
  if not prompt.endswith(ASSISTANT):
    raise ValueError("should end with '\\n\\nAssistant:' (the model's turn comes next)")
  turns = parse(prompt)
  if len(turns) < 2 or not turns[-2][1].strip():
    raise ValueError("has an empty last Human turn")


def _read_prompt_file(path: str, *, source: str) -> list[PromptRecord]:
  records: list[PromptRecord] = []
  first_line: dict[str, int] = {}
  for lineno, obj in read_jsonl(path):
    rid = _record_id(obj, path, lineno)
    if rid in first_line:
      raise DataError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {first_line[rid]})")
    first_line[rid] = lineno
    prompt = require(obj, "prompt", str, path, lineno)
    if not prompt.strip():
      raise DataError(f"{path}:{lineno}: field 'prompt' is empty")
    try:
      check_hh_prompt(prompt)
    except ValueError as e:
      raise DataError(f"{path}:{lineno}: field 'prompt' {e}") from None
    category = None
    if "category" in obj and obj["category"] is not None:
      category = require(obj, "category", str, path, lineno)
      if not category.strip():
        raise DataError(f"{path}:{lineno}: field 'category' is empty")
    metadata = {k: v for k, v in obj.items() if k not in ("id", "prompt", "category")}
    records.append(PromptRecord(rid, prompt, category, source, metadata))
  if not records:
    raise DataError(f"{path}: no prompts in the file")
  return records


# ---------------------------------------------------------------------------------------------
# HH-RLHF comparisons


def split_last_assistant(transcript: str) -> tuple[str, str] | None:
  """(prompt up to and including the last "\\n\\nAssistant:", reply after it), or None."""
  cut = transcript.rfind(ASSISTANT)
  if cut < 0:
    return None
  cut += len(ASSISTANT)
  return transcript[:cut], transcript[cut:]


def read_hh_comparisons(path: str | os.PathLike, *, id_prefix: str | None = None,
                        skip_mismatched: bool = False) -> list[Comparison]:
  """HH-RLHF comparisons from a .jsonl or .jsonl.gz file, in file order.

  Ids are `f"{id_prefix}-{line:06d}"` (prefix: the file name without .jsonl/.gz), stable for a
  given file. A line whose two transcripts differ before their last "\\n\\nAssistant:" fails
  with file:line, or is dropped when `skip_mismatched`."""
  path = os.fspath(path)
  prefix = _default_prefix(path) if id_prefix is None else id_prefix
  out: list[Comparison] = []
  seen_any = False
  for lineno, obj in read_jsonl(path):
    seen_any = True
    texts = {field: require(obj, field, str, path, lineno) for field in ("chosen", "rejected")}
    parts = {}
    for field, text in texts.items():
      if not text.startswith(HUMAN):
        raise DataError(f"{path}:{lineno}: field {field!r} should start with '\\n\\nHuman:'")
      split = split_last_assistant(text)
      if split is None:
        raise DataError(f"{path}:{lineno}: field {field!r} has no '\\n\\nAssistant:' turn")
      parts[field] = split
    (prompt, chosen), (other, rejected) = parts["chosen"], parts["rejected"]
    if prompt != other:
      if skip_mismatched:
        continue
      at = next((i for i, (a, b) in enumerate(zip(prompt, other)) if a != b),
                min(len(prompt), len(other)))
      raise DataError(f"{path}:{lineno}: 'chosen' and 'rejected' differ before their last "
                      f"'\\n\\nAssistant:' (first difference at character {at})")
    out.append(Comparison(f"{prefix}-{lineno:06d}", prompt, chosen, rejected, path))
  if not seen_any:
    raise DataError(f"{path}: no comparisons in the file")
  return out


def hh_prompts(comparisons: Iterable[Comparison]) -> list[PromptRecord]:
  """The distinct prompts of `comparisons`, in first-seen order; each record takes the id and
  source of the first comparison with that prompt, and `metadata["num_comparisons"]`."""
  by_prompt: dict[str, list] = {}
  for c in comparisons:
    if c.prompt in by_prompt:
      by_prompt[c.prompt][1] += 1
    else:
      by_prompt[c.prompt] = [c, 1]
  return [PromptRecord(c.id, c.prompt, None, c.source, {"num_comparisons": n})
          for c, n in by_prompt.values()]


# ---------------------------------------------------------------------------------------------
# red-team attempts


def read_red_team_attempts(path: str | os.PathLike, *, turns: str = "last",
                           id_prefix: str | None = None) -> list[PromptRecord]:
  """Prompts from Anthropic's red-team attempts (JSON array or jsonl, plain or gzip).

  `turns` chooses where each transcript is cut (the marker is kept, so the prompt ends with
  "\\n\\nAssistant:"):
  - 'last' (default, the issue's wording "conversation up to the last Assistant turn"): the
    whole conversation before the model's final reply. For a red-team transcript that includes
    the model's EARLIER replies, which came from the red-teamed model, not from the policy being
    trained; use it to continue those conversations as they were.
  - 'first': only the red-teamer's opening request (up to the first "\\n\\nAssistant:"), i.e.
    prompts that owe nothing to another model's answers; this is usually what one wants when
    the attempts are used as fresh prompts for SL-CAI or RL.
  Ids: the record's own `id` when it has one, else `f"{id_prefix}-{n:06d}"` with n the
  record's 1-based position. Every field but `transcript` and `id` goes to `metadata` (rating,
  task_description, tags, min_harmlessness_score_transcript, ... as present); category is None.
  """
  if turns not in ("first", "last"):
    raise ValueError(f"turns must be 'first' or 'last', got {turns!r}")
  path = os.fspath(path)
  prefix = _default_prefix(path) if id_prefix is None else id_prefix
  out: list[PromptRecord] = []
  first_line: dict[str, int] = {}
  for n, (lineno, obj) in enumerate(_iter_json_records(path), start=1):
    transcript = require(obj, "transcript", str, path, lineno)
    if not transcript.startswith(HUMAN):
      raise DataError(f"{path}:{lineno}: field 'transcript' should start with '\\n\\nHuman:'")
    cut = transcript.find(ASSISTANT) if turns == "first" else transcript.rfind(ASSISTANT)
    if cut < 0:
      raise DataError(f"{path}:{lineno}: field 'transcript' has no '\\n\\nAssistant:' turn")
    prompt = transcript[:cut + len(ASSISTANT)]
    rid = _record_id(obj, path, lineno) if "id" in obj else f"{prefix}-{n:06d}"
    if rid in first_line:
      raise DataError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {first_line[rid]})")
    first_line[rid] = lineno
    metadata = {k: v for k, v in obj.items() if k not in ("transcript", "id")}
    out.append(PromptRecord(rid, prompt, None, path, metadata))
  if not out:
    raise DataError(f"{path}: no red-team attempts in the file")
  return out
