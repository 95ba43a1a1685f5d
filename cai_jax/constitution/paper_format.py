"""Loader for the prompt files released with the paper (anthropics/ConstitutionalHarmlessnessPaper,
folder `prompts/`), so `--config.constitution=path/to/prompts` runs the paper's own constitution.

The folder must hold five files:

| file | shape | becomes |
|---|---|---|
| CritiqueRevisionInstructions.json | {"harmful0": {"prompt": ["\\n\\nCritiqueRequest: ...\\n\\nCritique:"], "edit_request": "\\n\\nRevisionRequest: ...\\n\\nRevision:"}, ...} | `critique_revision` (ids are the keys, texts verbatim) |
| CritiqueRevisionFewShotPrompts.json | [transcript, ...] | `critique_revision_few_shot` |
| RLMadisonInstructions.json | ["\\n<principle> Options:", ...] | `mc_principles` (ids mc0, mc1, ...; the leading "\\n" dropped) |
| RLMadisonFewShotPrompts.json | [{"prompt", "corrects": [one], "incorrects": [one]}, ...] | `mc_few_shot` |
| RLMadisonPrecogFewShotPrompts.json | [{"prompt": text with one "{}"}, ...] | `cot_few_shot` |

Texts are kept byte for byte, with two documented normalizations:

- critique/revision demonstrations: a trailing "\\n\\nHuman:" is removed from each (four of the
  five end with it, one does not), so that they can be joined with "" and every transcript,
  the red-team prompt included, brings its own "\\n\\nHuman:";
- chain-of-thought examples: the leading newlines are made exactly "\\n\\n" (the file's examples
  start with "\\n\\nHuman:", "\\nHuman:" or "Human:"), so joined examples stay separated by a
  blank line.

The paper's files have no helpful exchanges for sampling the initial answer; the loaded
constitution borrows `helpful_few_shot` from our default constitution (`harmless`) and records
that file in `Constitution.helpful_few_shot_source`.
"""

from __future__ import annotations

import os

from cai_jax.constitution import schema
# The five file names live with the schema, which names them in an error message.
from cai_jax.constitution.schema import (COT_FEW_SHOT, CRITIQUE_FEW_SHOT, CRITIQUE_INSTRUCTIONS,
                                         MC_FEW_SHOT, MC_INSTRUCTIONS, PAPER_FILES, Constitution,
                                         ConstitutionError, CritiqueRevisionPrinciple, MCExample,
                                         MCPrinciple)

PAPER_VERSION = "paper"


def _fail(path: str, where: str, msg: str):
  raise ConstitutionError(f"{path}: {where}: {msg}" if where else f"{path}: {msg}")


def _list(doc, path: str, what: str) -> list:
  if not isinstance(doc, list):
    _fail(path, "", f"expected a JSON list of {what}, got {type(doc).__name__}")
  if not doc:
    _fail(path, "", f"expected a non-empty JSON list of {what}, got an empty list")
  return doc


def _string(value, path: str, where: str) -> str:
  if not isinstance(value, str):
    _fail(path, where, f"should be a string, got {type(value).__name__}")
  if not value.strip():
    _fail(path, where, "empty text")
  return value


def _one_string(entry: dict, field: str, path: str, where: str) -> str:
  value = entry.get(field)
  if not isinstance(value, list) or len(value) != 1:
    _fail(path, where, f"{field!r} should be a list of exactly one string")
  return _string(value[0], path, f"{where}: {field}[0]")


def _wrapped(text: str, start: str, end: str, path: str, where: str) -> str:
  if not text.startswith(start + " ") or not text.endswith(end):
    _fail(path, where, f"should look like {start + ' ...' + end!r}, got {text[:40]!r}...")
  if not text[len(start):-len(end)].strip():
    _fail(path, where, "empty request")
  return text


def read_critique_instructions(path: str) -> tuple[CritiqueRevisionPrinciple, ...]:
  doc = schema.read_document(path)
  if not isinstance(doc, dict) or not doc:
    _fail(path, "", "expected a non-empty JSON object {id: {\"prompt\": [...], "
          "\"edit_request\": ...}}")
  out = []
  for pid, entry in doc.items():
    where = f"principle {pid!r}"
    if not isinstance(entry, dict):
      _fail(path, where, f"should be an object, got {type(entry).__name__}")
    for field in ("prompt", "edit_request"):
      if field not in entry:
        _fail(path, where, f"missing field {field!r}")
    critique = _wrapped(_one_string(entry, "prompt", path, where), schema.CRITIQUE_REQUEST,
                        schema.CRITIQUE, path, f"{where}: prompt[0]")
    revision = _wrapped(_string(entry["edit_request"], path, f"{where}: edit_request"),
                        schema.REVISION_REQUEST, schema.REVISION, path,
                        f"{where}: edit_request")
    out.append(CritiqueRevisionPrinciple(pid, critique, revision))
  return tuple(out)


def normalize_demonstration(transcript: str) -> str:
  """Drop one trailing "\\n\\nHuman:" (see the module docstring)."""
  if transcript.endswith(schema.HUMAN):
    return transcript[:-len(schema.HUMAN)]
  return transcript


def read_critique_few_shot(path: str) -> tuple[str, ...]:
  out = []
  for i, t in enumerate(_list(schema.read_document(path), path, "transcripts")):
    where = f"transcript [{i}]"
    t = _string(t, path, where)
    for marker in (schema.HUMAN, schema.ASSISTANT, schema.CRITIQUE_REQUEST, schema.CRITIQUE,
                   schema.REVISION_REQUEST, schema.REVISION):
      if marker not in t:
        _fail(path, where, f"has no {marker!r}")
    if not t.startswith(schema.HUMAN):
      _fail(path, where, f"should start with {schema.HUMAN!r}")
    out.append(normalize_demonstration(t))
  return tuple(out)


def read_mc_instructions(path: str) -> tuple[MCPrinciple, ...]:
  out = []
  for i, t in enumerate(_list(schema.read_document(path), path, "principles")):
    where = f"principle [{i}]"
    t = _string(t, path, where)
    if not t.startswith("\n"):
      _fail(path, where, "should start with '\\n' (the paper's layout)")
    out.append(MCPrinciple(f"mc{i}", t[1:]))
  return tuple(out)


def read_mc_few_shot(path: str) -> tuple[MCExample, ...]:
  out = []
  for i, e in enumerate(_list(schema.read_document(path), path, "examples")):
    where = f"example [{i}]"
    if not isinstance(e, dict):
      _fail(path, where, f"should be an object, got {type(e).__name__}")
    for field in ("prompt", "corrects", "incorrects"):
      if field not in e:
        _fail(path, where, f"missing field {field!r}")
    prompt = _string(e["prompt"], path, f"{where}: prompt")
    if not prompt.startswith(schema.HUMAN) or not prompt.endswith(schema.ASSISTANT):
      _fail(path, f"{where}: prompt", "should start with '\\n\\nHuman:' and end with "
            "'\\n\\nAssistant:'")
    out.append(MCExample(prompt, _one_string(e, "corrects", path, where),
                         _one_string(e, "incorrects", path, where)))
  return tuple(out)


def normalize_cot_example(text: str) -> str:
  """Make the leading newlines exactly "\\n\\n" (see the module docstring)."""
  return "\n\n" + text.lstrip("\n")


def read_cot_few_shot(path: str) -> tuple[str, ...]:
  out = []
  for i, e in enumerate(_list(schema.read_document(path), path, "examples")):
    where = f"example [{i}]"
    if not isinstance(e, dict) or "prompt" not in e:
      _fail(path, where, "should be an object with a 'prompt'")
    text = normalize_cot_example(_string(e["prompt"], path, f"{where}: prompt"))
    problem = schema.check_cot_example(text)
    if problem:
      _fail(path, where, problem)
    out.append(text)
  return tuple(out)


def is_paper_folder(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in PAPER_FILES)


def load_paper_folder(folder: str, helpful_from: Constitution) -> Constitution:
  """The paper's constitution from its five prompt files (module docstring). The helpful
  exchanges for the initial answer come from our constitution `helpful_from` (the paper's files
  have none; `loading.load_constitution` passes the default one)."""
  missing = [f for f in PAPER_FILES if not os.path.isfile(os.path.join(folder, f))]
  if missing:
    raise ConstitutionError(
        f"{folder}: not a folder of the paper's prompt files: missing {', '.join(missing)} "
        f"(expected all of {', '.join(PAPER_FILES)})")

  def f(name):
    return os.path.join(folder, name)

  helpful = helpful_from
  return Constitution(
      name="paper",
      version=PAPER_VERSION,
      source=folder,
      critique_revision=read_critique_instructions(f(CRITIQUE_INSTRUCTIONS)),
      critique_revision_few_shot=read_critique_few_shot(f(CRITIQUE_FEW_SHOT)),
      helpful_few_shot=helpful.helpful_few_shot,
      mc_principles=read_mc_instructions(f(MC_INSTRUCTIONS)),
      mc_few_shot=read_mc_few_shot(f(MC_FEW_SHOT)),
      cot_few_shot=read_cot_few_shot(f(COT_FEW_SHOT)),
      description=("The prompts released with Bai et al. 2022 (anthropics/"
                   "ConstitutionalHarmlessnessPaper, prompts/), verbatim apart from the "
                   "normalizations documented in cai_jax.constitution.paper_format; helpful "
                   f"few-shot exchanges borrowed from {helpful.source}."),
      helpful_few_shot_source=helpful.source)
