"""Constitutions as data: the in-memory form, our JSON file format, and its validation.

A `Constitution` holds every text the CAI stages send to a model, already in the paper's layout:

- `critique_revision`: principle pairs. `critique_prompt` is the full text appended to a
  transcript, `"\\n\\nCritiqueRequest: <request>\\n\\nCritique:"`, and `revision_prompt` is
  `"\\n\\nRevisionRequest: <request>\\n\\nRevision:"`.
- `critique_revision_few_shot`: worked transcripts
  `"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nCritiqueRequest: ...\\n\\nCritique: ...`
  `\\n\\nRevisionRequest: ...\\n\\nRevision: ..."`, without a trailing `"\\n\\nHuman:"`.
- `helpful_few_shot`: ordinary exchanges `"\\n\\nHuman: ...\\n\\nAssistant: ..."` that prefix the
  red-team prompt when the initial answer is sampled.
- `mc_principles`, `mc_few_shot`, `cot_few_shot`: the feedback model's multiple-choice principles
  (text ending in `"Options:"`, no leading newline), labelled examples, and chain-of-thought
  examples (each with one `"{}"` slot for `"\\n" + principle.text`, ending in
  `"So the answer is: (A)"` or `"(B)"`).

`load_constitution(spec)` accepts a bare name (`"harmless"`, `"caveats"`: a file in the
repository's `constitutions/` folder), a path to a file in our format (`.json`; `.yaml`/`.yml`
when PyYAML is installed), or a path to a folder holding the paper's five prompt files (see
`paper_format`). Our file format is documented field by field in `constitutions/README.md`;
every mistake in a file raises `ConstitutionError` naming the file and, where there is one, the
entry (`"x.json: critique_revision[3] (id 'toxicity'): empty 'revision_request'"`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

from cai_jax.constitution import prompts

FORMAT = "cai_jax.constitution"
FORMAT_VERSION = 1
DEFAULT = "harmless"
# The paper's five prompt files (read by `paper_format`; named here for the error that says a
# single one of them was given where a folder holding all five was meant).
CRITIQUE_INSTRUCTIONS = "CritiqueRevisionInstructions.json"
CRITIQUE_FEW_SHOT = "CritiqueRevisionFewShotPrompts.json"
MC_INSTRUCTIONS = "RLMadisonInstructions.json"
MC_FEW_SHOT = "RLMadisonFewShotPrompts.json"
COT_FEW_SHOT = "RLMadisonPrecogFewShotPrompts.json"
PAPER_FILES = (CRITIQUE_INSTRUCTIONS, CRITIQUE_FEW_SHOT, MC_INSTRUCTIONS, MC_FEW_SHOT,
               COT_FEW_SHOT)

# The folder of our constitutions: `constitutions/` at the repository root, beside `cai_jax/`.
CONSTITUTIONS_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "constitutions"))

# Markers of the paper's transcript layout. Texts inside our files may not contain them: a
# marker inside a text would silently split the transcript in the wrong place.
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
CRITIQUE_REQUEST = "\n\nCritiqueRequest:"
CRITIQUE = "\n\nCritique:"
REVISION_REQUEST = "\n\nRevisionRequest:"
REVISION = "\n\nRevision:"
_MARKERS = (HUMAN, ASSISTANT, CRITIQUE_REQUEST, CRITIQUE, REVISION_REQUEST, REVISION)
_FINAL_ANSWER = re.compile(r"So the answer is: \((A|B)\)$")


class ConstitutionError(ValueError):
  """A constitution that cannot be loaded; the message starts with the file (or folder) path."""


@dataclasses.dataclass(frozen=True)
class CritiqueRevisionPrinciple:
  id: str
  critique_prompt: str  # "\n\nCritiqueRequest: <request>\n\nCritique:"
  revision_prompt: str  # "\n\nRevisionRequest: <request>\n\nRevision:"


@dataclasses.dataclass(frozen=True)
class MCPrinciple:
  id: str
  text: str  # as it appears in the question, without a leading "\n": "Which ...? Options:"


@dataclasses.dataclass(frozen=True)
class MCExample:
  prompt: str  # "\n\nHuman: ...\n\nAssistant:" (the conversation up to the answer)
  correct: str  # the better response, as it goes between "[[[" and "]]]"
  incorrect: str


@dataclasses.dataclass(frozen=True)
class Constitution:
  """Every text of one constitution, in the paper's layout; see the module docstring."""
  name: str
  version: str | int  # the file format's version: 1 for our JSON, "paper" for the paper's folder
  source: str  # the file or folder it was loaded from
  critique_revision: tuple[CritiqueRevisionPrinciple, ...]
  critique_revision_few_shot: tuple[str, ...]
  helpful_few_shot: tuple[str, ...]
  mc_principles: tuple[MCPrinciple, ...]
  mc_few_shot: tuple[MCExample, ...]
  cot_few_shot: tuple[str, ...]
  description: str = ""
  # Where `helpful_few_shot` came from when not from `source` itself: the paper's files have no
  # helpful exchanges, so its folder borrows those of our default constitution and names it here.
  helpful_few_shot_source: str = ""

  def principle(self, id: str) -> CritiqueRevisionPrinciple:
    for p in self.critique_revision:
      if p.id == id:
        return p
    raise KeyError(f"{self.source}: no critique/revision principle {id!r} "
                   f"(have: {', '.join(p.id for p in self.critique_revision)})")

  def mc_principle(self, id: str) -> MCPrinciple:
    for p in self.mc_principles:
      if p.id == id:
        return p
    raise KeyError(f"{self.source}: no multiple-choice principle {id!r} "
                   f"(have: {', '.join(p.id for p in self.mc_principles)})")

  def digest(self) -> str:
    """sha256 (hex, first 16 digits) of every text the model sees: names a constitution in logs."""
    h = hashlib.sha256()
    parts = [p for pr in self.critique_revision for p in (pr.id, pr.critique_prompt,
                                                          pr.revision_prompt)]
    parts += list(self.critique_revision_few_shot) + list(self.helpful_few_shot)
    parts += [p for pr in self.mc_principles for p in (pr.id, pr.text)]
    parts += [p for ex in self.mc_few_shot for p in (ex.prompt, ex.correct, ex.incorrect)]
    parts += list(self.cot_few_shot)
    for p in parts:
      h.update(len(p.encode()).to_bytes(8, "little") + p.encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Rendering: from the plain texts of our files to the paper's layout.


def critique_prompt(request: str) -> str:
  return f"{CRITIQUE_REQUEST} {request}{CRITIQUE}"


def revision_prompt(request: str) -> str:
  return f"{REVISION_REQUEST} {request}{REVISION}"


def render_exchanges(turns: list[tuple[str, str]]) -> str:
  """[(human, assistant)] -> "\\n\\nHuman: h\\n\\nAssistant: a..."; an assistant of None ends the
  text with a bare "\\n\\nAssistant:" (a prompt awaiting the answer)."""
  out = []
  for human, assistant in turns:
    out.append(f"{HUMAN} {human}")
    out.append(ASSISTANT if assistant is None else f"{ASSISTANT} {assistant}")
  return "".join(out)


def render_demonstration(turns, critique_request, critique, revision_request, revision) -> str:
  return (render_exchanges(turns) + critique_prompt(critique_request) + f" {critique}"
          + revision_prompt(revision_request) + f" {revision}")


def render_cot_example(prompt: str, response_a: str, response_b: str, reasoning: str,
                       answer: str) -> str:
  """A chain-of-thought example in the paper's layout, with its "{}" slot left open."""
  conversation = prompts.mc_conversation(prompt)
  return (prompts.cot_question_template(conversation, response_a, response_b)
          + f" {reasoning}{prompts.COT_ANSWER} ({answer})")


def check_cot_example(text: str) -> str | None:
  """Why `text` is not a usable chain-of-thought example, or None when it is."""
  slots = text.count("{}")
  if slots != 1:
    return f"has {slots} '{{}}' slots for the principle (needs exactly one)"
  if not _FINAL_ANSWER.search(text):
    return "does not end with a final answer 'So the answer is: (A)' or '(B)'"
  return None


# ----------------------------------------------------------------------------------------------
# Our file format.

_TOP = {"format", "version", "name", "description", "critique_revision",
        "critique_revision_few_shot", "helpful_few_shot", "mc_principles", "mc_few_shot",
        "cot_few_shot"}
_REQUIRED_TOP = ("format", "version", "name", "critique_revision", "mc_principles")
_CONVERSATION = ("human", "assistant", "conversation")
_FIELDS = {
    "critique_revision": {"id", "critique_request", "revision_request"},
    "critique_revision_few_shot": {"id", *_CONVERSATION, "critique_request", "critique",
                                   "revision_request", "revision"},
    "helpful_few_shot": {"id", *_CONVERSATION},
    "mc_principles": {"id", "text"},
    "mc_few_shot": {"id", *_CONVERSATION, "correct", "incorrect"},
    "cot_few_shot": {"id", *_CONVERSATION, "response_a", "response_b", "reasoning", "answer",
                     "text"},
}


class _Reader:
  """Checks one file's entries; every error names the file and the entry."""

  def __init__(self, path: str):
    self.path = path

  def fail(self, where: str, msg: str):
    raise ConstitutionError(f"{self.path}: {where}: {msg}" if where else f"{self.path}: {msg}")

  def keys(self, obj: dict, allowed: set, where: str) -> None:
    # Keys starting with "_" are comments (JSON has none of its own).
    unknown = sorted(k for k in obj if k not in allowed and not k.startswith("_"))
    if unknown:
      self.fail(where, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")

  def text(self, obj: dict, field: str, where: str, *, markers: bool = True,
           brackets: bool = False) -> str:
    if field not in obj:
      self.fail(where, f"missing field {field!r}")
    value = obj[field]
    if not isinstance(value, str):
      self.fail(where, f"field {field!r} should be a string, got {type(value).__name__}")
    if not value.strip():
      self.fail(where, f"empty {field!r}")
    if value != value.strip():
      self.fail(where, f"{field!r} starts or ends with whitespace (the layout adds its own)")
    if markers:
      for m in _MARKERS:
        if m in value:
          self.fail(where, f"{field!r} contains the transcript marker {m!r}")
    if brackets and ("[[[" in value or "]]]" in value):
      self.fail(where, f"{field!r} contains '[[[' or ']]]', which delimit the options")
    return value

  def entries(self, doc: dict, section: str, *, minimum: int) -> list[tuple[str, dict]]:
    """[(where, entry)] for a list of objects with unique, non-empty ids."""
    value = doc.get(section, [])
    if not isinstance(value, list):
      self.fail(section, f"should be a list, got {type(value).__name__}")
    if len(value) < minimum:
      self.fail(section, f"needs at least {minimum} entr{'y' if minimum == 1 else 'ies'}, "
                f"got {len(value)}")
    seen: dict[str, int] = {}
    out = []
    for i, entry in enumerate(value):
      where = f"{section}[{i}]"
      if not isinstance(entry, dict):
        self.fail(where, f"should be an object, got {type(entry).__name__}")
      if "id" not in entry:
        self.fail(where, "missing field 'id'")
      eid = entry["id"]
      if not isinstance(eid, str) or not eid.strip() or eid != eid.strip() or " " in eid:
        self.fail(where, f"'id' should be a non-empty string without spaces, got {eid!r}")
      where = f"{where} (id {eid!r})"
      if eid in seen:
        self.fail(where, f"duplicate id {eid!r} (first used by {section}[{seen[eid]}])")
      seen[eid] = i
      self.keys(entry, _FIELDS[section], where)
      out.append((where, entry))
    return out

  def turns(self, entry: dict, where: str, *, answered: bool) -> list[tuple[str, str | None]]:
    """The conversation of an entry: either `human` (+ `assistant`) or `conversation`, a list of
    {"human", "assistant"} exchanges. With answered=False the last exchange has no assistant."""
    if "conversation" in entry:
      if "human" in entry or "assistant" in entry:
        self.fail(where, "give either 'conversation' or 'human'/'assistant', not both")
      conv = entry["conversation"]
      if not isinstance(conv, list) or not conv:
        self.fail(where, "'conversation' should be a non-empty list of "
                  "{\"human\": ..., \"assistant\": ...} exchanges")
      exchanges = conv
      names = [f"{where}: conversation[{i}]" for i in range(len(conv))]
    else:
      if "human" not in entry:
        self.fail(where, "missing field 'human' (or 'conversation')")
      exchanges = [{k: entry[k] for k in ("human", "assistant") if k in entry}]
      names = [where]
    out = []
    for i, (ex, name) in enumerate(zip(exchanges, names)):
      last = i == len(exchanges) - 1
      if not isinstance(ex, dict):
        self.fail(name, f"should be an object, got {type(ex).__name__}")
      self.keys(ex, {"human", "assistant"}, name)
      human = self.text(ex, "human", name)
      if last and not answered:
        if "assistant" in ex:
          self.fail(name, "the last exchange must end with the human's turn (no 'assistant': "
                    "the responses to compare are given separately)")
        out.append((human, None))
      else:
        out.append((human, self.text(ex, "assistant", name)))
    return out


def _no_duplicate_keys(pairs):
  obj = {}
  for k, v in pairs:
    if k in obj:
      raise ValueError(f"duplicate key {k!r}")
    obj[k] = v
  return obj


def read_document(path: str) -> Any:
  """The parsed content of a JSON (or YAML) file; errors name the file."""
  ext = os.path.splitext(path)[1].lower()
  try:
    with open(path, encoding="utf-8") as f:
      raw = f.read()
  except OSError as e:
    raise ConstitutionError(f"{path}: cannot read ({e.strerror})") from None
  except UnicodeDecodeError as e:
    raise ConstitutionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if ext in (".yaml", ".yml"):
    try:
      import yaml
    except ImportError:
      raise ConstitutionError(f"{path}: YAML constitutions need PyYAML (pip install pyyaml); "
                              "or write the file as JSON") from None
    try:
      return yaml.safe_load(raw)
    except yaml.YAMLError as e:
      raise ConstitutionError(f"{path}: not valid YAML ({e})") from None
  try:
    return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
  except json.JSONDecodeError as e:
    raise ConstitutionError(
        f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
  except ValueError as e:  # a duplicate key
    raise ConstitutionError(f"{path}: not valid: {e}") from None


def parse_constitution(doc: Any, path: str) -> Constitution:
  """Validate a parsed file in our format and render its texts into the paper's layout."""
  r = _Reader(path)
  if not isinstance(doc, dict):
    hint = ""
    if os.path.basename(path) in PAPER_FILES:
      hint = " (this is one of the paper's prompt files: pass the folder that holds all five)"
    r.fail("", f"expected a JSON object with \"format\": {FORMAT!r}, "
           f"got {type(doc).__name__}{hint}")
  for field in _REQUIRED_TOP:
    if field not in doc:
      r.fail("", f"missing field {field!r}")
  if doc["format"] != FORMAT:
    r.fail("", f"unknown format {doc['format']!r} (expected {FORMAT!r})")
  version = doc["version"]
  if type(version) is not int or version != FORMAT_VERSION:
    r.fail("", f"unsupported version {version!r} (this cai_jax reads version {FORMAT_VERSION})")
  r.keys(doc, _TOP, "")
  name = r.text(doc, "name", "")
  description = ""
  if "description" in doc:
    if not isinstance(doc["description"], str):
      r.fail("", f"field 'description' should be a string, got "
             f"{type(doc['description']).__name__}")
    description = doc["description"]

  principles = []
  for where, e in r.entries(doc, "critique_revision", minimum=1):
    principles.append(CritiqueRevisionPrinciple(
        e["id"], critique_prompt(r.text(e, "critique_request", where)),
        revision_prompt(r.text(e, "revision_request", where))))

  demos = []
  for where, e in r.entries(doc, "critique_revision_few_shot", minimum=0):
    turns = r.turns(e, where, answered=True)
    demos.append(render_demonstration(
        turns, *(r.text(e, f, where) for f in ("critique_request", "critique",
                                                "revision_request", "revision"))))

  helpful = [render_exchanges(r.turns(e, where, answered=True))
             for where, e in r.entries(doc, "helpful_few_shot", minimum=0)]

  mc_principles = []
  for where, e in r.entries(doc, "mc_principles", minimum=1):
    text = r.text(e, "text", where, brackets=True)
    if text.endswith("Options:"):
      r.fail(where, "'text' should not end with 'Options:' (the loader appends ' Options:')")
    mc_principles.append(MCPrinciple(e["id"], f"{text} Options:"))

  mc_examples = []
  for where, e in r.entries(doc, "mc_few_shot", minimum=0):
    prompt = render_exchanges(r.turns(e, where, answered=False))
    mc_examples.append(MCExample(prompt, r.text(e, "correct", where, brackets=True),
                                 r.text(e, "incorrect", where, brackets=True)))

  cot = []
  for where, e in r.entries(doc, "cot_few_shot", minimum=0):
    if "text" in e:
      # A raw example already in the paper's layout (escape hatch for exact reproductions).
      structured = set(e) & {*_CONVERSATION, "response_a", "response_b", "reasoning", "answer"}
      if structured:
        r.fail(where, f"give either 'text' or the structured fields, not both "
               f"(found {sorted(structured)[0]!r})")
      if not isinstance(e["text"], str) or not e["text"].strip():
        r.fail(where, "empty 'text'")
      text = e["text"]
    else:
      prompt = render_exchanges(r.turns(e, where, answered=False))
      a = r.text(e, "response_a", where, brackets=True)
      b = r.text(e, "response_b", where, brackets=True)
      reasoning = r.text(e, "reasoning", where)
      if "answer" not in e:
        r.fail(where, "missing field 'answer' (the final answer, \"A\" or \"B\")")
      if e["answer"] not in ("A", "B"):
        r.fail(where, f"'answer' should be \"A\" or \"B\", got {e['answer']!r}")
      text = render_cot_example(prompt, a, b, reasoning, e["answer"])
    problem = check_cot_example(text)
    if problem:
      r.fail(where, problem)
    cot.append(text)

  return Constitution(
      name=name, version=version, source=path, critique_revision=tuple(principles),
      critique_revision_few_shot=tuple(demos), helpful_few_shot=tuple(helpful),
      mc_principles=tuple(mc_principles), mc_few_shot=tuple(mc_examples),
      cot_few_shot=tuple(cot), description=description)


def load_file(path: str) -> Constitution:
  """A constitution file in our format (.json, or .yaml/.yml with PyYAML)."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".json", ".yaml", ".yml"):
    raise ConstitutionError(f"{path}: unknown file type {ext or '(none)'!r}: a constitution is "
                            "a .json (or .yaml) file, or the paper's prompt folder")
  return parse_constitution(read_document(path), path)
