"""Constitutions: our files, the format's validation, the paper's prompt files (when ../shared is
there) and the exact strings sent to the model."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil

import pytest

from cai_jax.constitution import loading, paper_format, prompts, schema
from cai_jax.constitution.loading import load_constitution
from cai_jax.constitution.schema import Constitution, ConstitutionError, MCExample, MCPrinciple
from conftest import PAPER_PROMPTS

needs_paper = pytest.mark.skipif(
    not os.path.isdir(PAPER_PROMPTS),
    reason="../shared/reference/cai-paper-prompts is absent (a fresh clone has no ../shared)")


def _paper_raw(name):
  with open(os.path.join(PAPER_PROMPTS, name), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def harmless():
  return load_constitution("harmless")


@pytest.fixture(scope="module")
def caveats():
  return load_constitution("caveats")


@pytest.fixture(scope="module")
def paper():
  if not os.path.isdir(PAPER_PROMPTS):
    pytest.skip("../shared/reference/cai-paper-prompts is absent (a fresh clone has no ../shared)")
  return load_constitution(PAPER_PROMPTS)


# ----------------------------------------------------------------------------------------------
# Our constitutions.


def _check_well_formed(c: Constitution):
  for p in c.critique_revision:
    assert p.critique_prompt.startswith("\n\nCritiqueRequest: ")
    assert p.critique_prompt.endswith("\n\nCritique:")
    assert p.revision_prompt.startswith("\n\nRevisionRequest: ")
    assert p.revision_prompt.endswith("\n\nRevision:")
  for t in c.critique_revision_few_shot:
    assert t.startswith("\n\nHuman: ") and not t.endswith("\n\nHuman:")
    marks = [t.index(m) for m in ("\n\nAssistant: ", "\n\nCritiqueRequest: ", "\n\nCritique: ",
                                  "\n\nRevisionRequest: ", "\n\nRevision: ")]
    assert marks == sorted(marks)
  for t in c.helpful_few_shot:
    assert t.startswith("\n\nHuman: ") and "\n\nAssistant: " in t
  for p in c.mc_principles:
    assert p.text.endswith(" Options:") and not p.text.startswith("\n")
  for ex in c.mc_few_shot:
    assert ex.prompt.startswith("\n\nHuman: ") and ex.prompt.endswith("\n\nAssistant:")
    assert ex.correct and ex.incorrect and ex.correct != ex.incorrect
  answers = set()
  for t in c.cot_few_shot:
    assert t.count("{}") == 1 and t.startswith("\n\nHuman: Consider the following conversation")
    answers.add(re.search(r"So the answer is: \((A|B)\)$", t).group(1))
  if len(c.cot_few_shot) > 1:
    assert answers == {"A", "B"}  # the answer is not always the same letter
  assert len({p.id for p in c.critique_revision}) == len(c.critique_revision)


def test_harmless_is_complete(harmless):
  c = harmless
  assert (c.name, c.version) == ("harmless", 1)
  assert c.source == os.path.join(schema.CONSTITUTIONS_DIR, "harmless.json")
  assert len(c.critique_revision) == 16
  assert 4 <= len(c.critique_revision_few_shot) <= 5
  assert 3 <= len(c.helpful_few_shot) <= 4
  assert len(c.mc_principles) == 16
  assert len(c.mc_few_shot) == 5
  assert 5 <= len(c.cot_few_shot) <= 6
  _check_well_formed(c)
  assert c.principle("toxicity").critique_prompt.startswith("\n\nCritiqueRequest: Note any")
  assert c.mc_principle("fairness").text.endswith("avoids stereotypes? Options:")
  assert load_constitution(schema.DEFAULT).digest() == c.digest()


def test_harmless_has_a_demonstration_that_changes_nothing():
  # The model must also see an answer that was already fine, critiqued as such and kept.
  with open(os.path.join(schema.CONSTITUTIONS_DIR, "harmless.json"), encoding="utf-8") as f:
    doc = json.load(f)
  kept = [d for d in doc["critique_revision_few_shot"] if d.get("assistant") == d["revision"]]
  assert kept


def test_caveats_steers_something_else(caveats, harmless):
  c = caveats
  assert c.name == "caveats"
  assert len(c.critique_revision) >= 6
  assert 3 <= len(c.critique_revision_few_shot) <= 4
  assert len(c.mc_principles) >= 4
  assert len(c.mc_few_shot) >= 2
  assert len(c.cot_few_shot) >= 2
  _check_well_formed(c)
  assert c.digest() != harmless.digest()


def test_available_constitutions():
  names = loading.available_constitutions()
  assert {"harmless", "caveats", "helpful"} <= set(names)
  for name in names:  # every file in constitutions/ loads
    load_constitution(name)


def test_principle_lookup(harmless):
  with pytest.raises(KeyError, match="no critique/revision principle 'nope'"):
    harmless.principle("nope")
  with pytest.raises(KeyError, match="no multiple-choice principle"):
    harmless.mc_principle("nope")


# ----------------------------------------------------------------------------------------------
# Rendering our format: byte for byte.

MINIMAL = {
    "format": "cai_jax.constitution",
    "version": 1,
    "name": "tiny",
    "description": "a test",
    "critique_revision": [
        {"id": "p1", "critique_request": "Find the flaw.", "revision_request": "Fix the flaw."},
        {"id": "p2", "critique_request": "Is it rude?", "revision_request": "Make it polite."},
    ],
    "critique_revision_few_shot": [
        {"id": "d1", "human": "Hi?", "assistant": "Go away.", "critique_request": "Is it rude?",
         "critique": "Yes, curt.", "revision_request": "Make it polite.", "revision": "Hello!"},
        {"id": "d2", "conversation": [{"human": "A", "assistant": "B"},
                                      {"human": "C", "assistant": "D"}],
         "critique_request": "Q", "critique": "R", "revision_request": "S", "revision": "T"},
    ],
    "helpful_few_shot": [{"id": "h1", "human": "2+2?", "assistant": "4."}],
    "mc_principles": [{"id": "m1", "text": "Which is kinder?"}],
    "mc_few_shot": [
        {"id": "e1", "human": "Help?", "correct": "Sure.", "incorrect": "No."},
        {"id": "e2", "conversation": [{"human": "Hi", "assistant": "Hello"}, {"human": "Joke?"}],
         "correct": "Knock knock.", "incorrect": "Never."},
    ],
    "cot_few_shot": [
        {"id": "c1", "human": "Hi?", "response_a": "Hello!", "response_b": "What.",
         "reasoning": "(A) is friendlier.", "answer": "A"},
        {"id": "c2", "text": "\n\nHuman: anything {} here\n\nHuman:\nSo the answer is: (B)"},
    ],
}


def _write(tmp_path, doc, name="c.json"):
  path = os.path.join(str(tmp_path), name)
  with open(path, "w", encoding="utf-8") as f:
    if isinstance(doc, str):
      f.write(doc)
    else:
      json.dump(doc, f)
  return path


def test_our_format_renders_the_paper_layout(tmp_path):
  c = load_constitution(_write(tmp_path, MINIMAL))
  assert (c.name, c.version, c.description) == ("tiny", 1, "a test")
  assert c.critique_revision[0] == schema.CritiqueRevisionPrinciple(
      "p1", "\n\nCritiqueRequest: Find the flaw.\n\nCritique:",
      "\n\nRevisionRequest: Fix the flaw.\n\nRevision:")
  assert c.critique_revision_few_shot == (
      "\n\nHuman: Hi?\n\nAssistant: Go away.\n\nCritiqueRequest: Is it rude?\n\nCritique: Yes, "
      "curt.\n\nRevisionRequest: Make it polite.\n\nRevision: Hello!",
      "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D\n\nCritiqueRequest: Q\n\n"
      "Critique: R\n\nRevisionRequest: S\n\nRevision: T")
  assert c.helpful_few_shot == ("\n\nHuman: 2+2?\n\nAssistant: 4.",)
  assert c.mc_principles == (MCPrinciple("m1", "Which is kinder? Options:"),)
  assert c.mc_few_shot == (
      MCExample("\n\nHuman: Help?\n\nAssistant:", "Sure.", "No."),
      MCExample("\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:",
                "Knock knock.", "Never."))
  assert c.cot_few_shot == (
      "\n\nHuman: Consider the following conversation between a human (H) and an assistant (A):"
      "\n\nH: Hi?\n\n{}\n (A) [[[Hello!]]]\n (B) [[[What.]]]\n\nAssistant: Let's think step by "
      "step: (A) is friendlier.\n\nHuman:\nSo the answer is: (A)",
      "\n\nHuman: anything {} here\n\nHuman:\nSo the answer is: (B)")


@pytest.mark.parametrize("mutate, fragments", [
    (lambda d: d.pop("format"), ["missing field 'format'"]),
    (lambda d: d.update(format="something.else"), ["unknown format 'something.else'"]),
    (lambda d: d.update(version=2), ["unsupported version 2", "reads version 1"]),
    (lambda d: d.update(version="1"), ["unsupported version '1'"]),
    (lambda d: d.pop("version"), ["missing field 'version'"]),
    (lambda d: d.pop("name"), ["missing field 'name'"]),
    (lambda d: d.update(name=" "), ["empty 'name'"]),
    (lambda d: d.update(critique_revison=[]), ["unknown field 'critique_revison'"]),
    (lambda d: d.update(description=3), ["'description' should be a string"]),
    (lambda d: d.update(critique_revision=[]), ["critique_revision: needs at least 1"]),
    (lambda d: d.update(critique_revision={"a": 1}), ["critique_revision: should be a list"]),
    (lambda d: d.pop("critique_revision"), ["missing field 'critique_revision'"]),
    (lambda d: d.update(mc_principles=[]), ["mc_principles: needs at least 1"]),
    (lambda d: d["critique_revision"][1].pop("revision_request"),
     ["critique_revision[1] (id 'p2'): missing field 'revision_request'"]),
    (lambda d: d["critique_revision"][1].update(revision_request="  \n "),
     ["critique_revision[1] (id 'p2'): empty 'revision_request'"]),
    (lambda d: d["critique_revision"][0].update(critique_request=""),
     ["critique_revision[0] (id 'p1'): empty 'critique_request'"]),
    (lambda d: d["critique_revision"][0].update(critique_request=7),
     ["critique_revision[0] (id 'p1'): field 'critique_request' should be a string, got int"]),
    (lambda d: d["critique_revision"][0].update(critique_request=" Lead space."),
     ["critique_revision[0] (id 'p1'): 'critique_request' starts or ends with whitespace"]),
    (lambda d: d["critique_revision"][0].update(critique_request="a\n\nHuman: b"),
     ["critique_revision[0] (id 'p1'): 'critique_request' contains the transcript marker"]),
    (lambda d: d["critique_revision"][1].update(id="p1"),
     ["critique_revision[1] (id 'p1'): duplicate id 'p1' (first used by critique_revision[0])"]),
    (lambda d: d["critique_revision"][1].pop("id"), ["critique_revision[1]: missing field 'id'"]),
    (lambda d: d["critique_revision"][1].update(id="has space"),
     ["critique_revision[1]: 'id' should be a non-empty string without spaces"]),
    (lambda d: d["critique_revision"][1].update(critque="x"),
     ["critique_revision[1] (id 'p2'): unknown field 'critque'"]),
    (lambda d: d["critique_revision"].append("text"),
     ["critique_revision[2]: should be an object, got str"]),
    (lambda d: d["critique_revision_few_shot"][0].pop("critique"),
     ["critique_revision_few_shot[0] (id 'd1'): missing field 'critique'"]),
    (lambda d: d["critique_revision_few_shot"][0].pop("human"),
     ["critique_revision_few_shot[0] (id 'd1'): missing field 'human' (or 'conversation')"]),
    (lambda d: d["critique_revision_few_shot"][1].update(conversation=[]),
     ["critique_revision_few_shot[1] (id 'd2'): 'conversation' should be a non-empty list"]),
    (lambda d: d["critique_revision_few_shot"][1]["conversation"][1].pop("assistant"),
     ["critique_revision_few_shot[1] (id 'd2'): conversation[1]: missing field 'assistant'"]),
    (lambda d: d["critique_revision_few_shot"][0].update(conversation=[{"human": "x"}]),
     ["critique_revision_few_shot[0] (id 'd1'): give either 'conversation' or"]),
    (lambda d: d["helpful_few_shot"][0].update(assistant=""),
     ["helpful_few_shot[0] (id 'h1'): empty 'assistant'"]),
    (lambda d: d["mc_principles"][0].update(text="Which is kinder? Options:"),
     ["mc_principles[0] (id 'm1'): 'text' should not end with 'Options:'"]),
    (lambda d: d["mc_principles"].append({"id": "m1", "text": "Again?"}),
     ["mc_principles[1] (id 'm1'): duplicate id 'm1'"]),
    (lambda d: d["mc_few_shot"][0].update(correct=""),
     ["mc_few_shot[0] (id 'e1'): empty 'correct'"]),
    (lambda d: d["mc_few_shot"][0].pop("incorrect"),
     ["mc_few_shot[0] (id 'e1'): missing field 'incorrect'"]),
    (lambda d: d["mc_few_shot"][0].update(correct="a ]]] b"),
     ["mc_few_shot[0] (id 'e1'): 'correct' contains '[[[' or ']]]'"]),
    (lambda d: d["mc_few_shot"][0].update(assistant="Too late."),
     ["mc_few_shot[0] (id 'e1'): the last exchange must end with the human's turn"]),
    (lambda d: d["cot_few_shot"][1].update(text="\n\nHuman: no slot\nSo the answer is: (A)"),
     ["cot_few_shot[1] (id 'c2'): has 0 '{}' slots"]),
    (lambda d: d["cot_few_shot"][1].update(text="{} and {}\nSo the answer is: (A)"),
     ["cot_few_shot[1] (id 'c2'): has 2 '{}' slots"]),
    (lambda d: d["cot_few_shot"][1].update(text="\n\nHuman: {}\n\nAssistant: I think A."),
     ["cot_few_shot[1] (id 'c2'): does not end with a final answer"]),
    (lambda d: d["cot_few_shot"][1].update(human="x"),
     ["cot_few_shot[1] (id 'c2'): give either 'text' or the structured fields"]),
    (lambda d: d["cot_few_shot"][0].update(answer="C"),
     ["cot_few_shot[0] (id 'c1'): 'answer' should be \"A\" or \"B\", got 'C'"]),
    (lambda d: d["cot_few_shot"][0].pop("answer"),
     ["cot_few_shot[0] (id 'c1'): missing field 'answer'"]),
    (lambda d: d["cot_few_shot"][0].update(reasoning="uses {} twice"),
     ["cot_few_shot[0] (id 'c1'): has 2 '{}' slots"]),
])
def test_validation_errors_name_file_and_entry(tmp_path, mutate, fragments):
  doc = copy.deepcopy(MINIMAL)
  mutate(doc)
  path = _write(tmp_path, doc)
  with pytest.raises(ConstitutionError) as e:
    load_constitution(path)
  message = str(e.value)
  assert message.startswith(path + ": ")
  for fragment in fragments:
    assert fragment in message, message


@pytest.mark.parametrize("text, fragment", [
    ('{"format": "cai_jax.constitution",\n "version": 1\n "name": "x"}',
     "not valid JSON: Expecting ',' delimiter (line 3, column 2)"),
    ('{"format": "cai_jax.constitution", "format": "cai_jax.constitution"}',
     "duplicate key 'format'"),
    ('["a", "b"]', "expected a JSON object"),
    ("", "not valid JSON"),
])
def test_malformed_files(tmp_path, text, fragment):
  path = _write(tmp_path, text)
  with pytest.raises(ConstitutionError) as e:
    load_constitution(path)
  assert str(e.value).startswith(path + ": ") and fragment in str(e.value), str(e.value)


def test_not_utf8(tmp_path):
  path = os.path.join(str(tmp_path), "c.json")
  with open(path, "wb") as f:
    f.write(b'{"name": "\xff"}')
  with pytest.raises(ConstitutionError, match="not UTF-8"):
    load_constitution(path)


# ----------------------------------------------------------------------------------------------
# Resolving a spec: name, file, folder.


def test_resolution_by_path(tmp_path, monkeypatch):
  path = _write(tmp_path, MINIMAL, "mine.json")
  assert load_constitution(path).source == path
  monkeypatch.chdir(str(tmp_path))
  assert load_constitution("mine.json").name == "tiny"  # relative to the working directory
  assert load_constitution("./mine.json").source == "./mine.json"


def test_resolution_errors(tmp_path):
  with pytest.raises(ConstitutionError, match=r"no constitution named 'nosuch' \(available in .*"
                     r"caveats, harmless, helpful"):
    load_constitution("nosuch")
  missing = os.path.join(str(tmp_path), "nope.json")
  with pytest.raises(ConstitutionError, match=re.escape(missing) + ": no such file or folder"):
    load_constitution(missing)
  with pytest.raises(ConstitutionError, match="empty constitution"):
    load_constitution("")
  other = _write(tmp_path, "x", "rules.txt")
  with pytest.raises(ConstitutionError, match=re.escape(other) + ": unknown file type '.txt'"):
    load_constitution(other)
  with pytest.raises(ConstitutionError) as e:  # a folder that is not the paper's
    load_constitution(str(tmp_path))
  assert str(e.value).startswith(str(tmp_path) + ": not a folder of the paper's prompt files")
  assert "missing CritiqueRevisionInstructions.json" in str(e.value)


def test_yaml_file(tmp_path):
  yaml = pytest.importorskip("yaml", reason="PyYAML is optional")
  path = os.path.join(str(tmp_path), "c.yaml")
  with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(MINIMAL, f)
  assert load_constitution(path).digest() == load_constitution(_write(tmp_path, MINIMAL)).digest()


# ----------------------------------------------------------------------------------------------
# The paper's prompt files.


@needs_paper
def test_paper_counts_and_texts(paper):
  instructions = _paper_raw(paper_format.CRITIQUE_INSTRUCTIONS)
  assert paper.version == "paper" and paper.source == PAPER_PROMPTS
  assert [p.id for p in paper.critique_revision] == [f"harmful{i}" for i in range(16)]
  for p in paper.critique_revision:
    assert p.critique_prompt == instructions[p.id]["prompt"][0]
    assert p.revision_prompt == instructions[p.id]["edit_request"]
  assert len(paper.critique_revision_few_shot) == 5
  raw_mc = _paper_raw(paper_format.MC_INSTRUCTIONS)
  assert len(paper.mc_principles) == 16
  assert ["\n" + p.text for p in paper.mc_principles] == raw_mc
  assert len(paper.mc_few_shot) == 5
  for ex, raw in zip(paper.mc_few_shot, _paper_raw(paper_format.MC_FEW_SHOT)):
    assert (ex.prompt, [ex.correct], [ex.incorrect]) == (raw["prompt"], raw["corrects"],
                                                          raw["incorrects"])
  assert len(paper.cot_few_shot) == 6
  for ex, raw in zip(paper.cot_few_shot, _paper_raw(paper_format.COT_FEW_SHOT)):
    assert ex.startswith("\n\nHuman:") and ex == "\n\n" + raw["prompt"].lstrip("\n")
  # The paper has no helpful exchanges: ours are borrowed, and the constitution says from where.
  harmless = load_constitution("harmless")
  assert paper.helpful_few_shot == harmless.helpful_few_shot
  assert paper.helpful_few_shot_source == harmless.source


@needs_paper
def test_paper_critique_and_revision_contexts_byte_exact(paper):
  transcripts = _paper_raw(paper_format.CRITIQUE_FEW_SHOT)
  instructions = _paper_raw(paper_format.CRITIQUE_INSTRUCTIONS)
  # Four of five demonstrations end with "\n\nHuman:" and one does not; all five lose it.
  assert sum(t.endswith("\n\nHuman:") for t in transcripts) == 4
  prefix = ""
  for t in transcripts:
    prefix += t[:-len("\n\nHuman:")] if t.endswith("\n\nHuman:") else t
  first = next(iter(instructions))
  assert first == "harmful0"
  request = instructions[first]["prompt"][0]
  edit = instructions[first]["edit_request"]
  critique_text = request[len("\n\nCritiqueRequest: "):-len("\n\nCritique:")]
  revision_text = edit[len("\n\nRevisionRequest: "):-len("\n\nRevision:")]
  conversation = "\n\nHuman: How do I pick the lock on my neighbour's shed?\n\nAssistant:"
  response = " Use a tension wrench and a pick."
  critique = " The assistant helps with a likely break-in."
  expected_critique = (prefix + conversation + response + "\n\nCritiqueRequest: "
                       + critique_text + "\n\nCritique:")
  expected_revision = (expected_critique + critique + "\n\nRevisionRequest: " + revision_text
                       + "\n\nRevision:")
  got = prompts.critique_context(paper, conversation, response, paper.principle("harmful0"))
  assert got == expected_critique
  assert prompts.critique_context(paper, conversation, response, "harmful0") == got
  assert prompts.revision_context(paper, conversation, response, "harmful0",
                                  critique) == expected_revision
  # The joined demonstrations run straight into the red-team prompt's own "\n\nHuman:".
  assert "\n\nHuman:\n\nHuman:" not in expected_critique
  assert expected_critique.count("\n\nHuman: ") == sum(t.count("\n\nHuman: ")
                                                       for t in transcripts) + 1


@needs_paper
def test_paper_folder_errors(tmp_path):
  folder = os.path.join(str(tmp_path), "prompts")
  shutil.copytree(PAPER_PROMPTS, folder)
  for name in paper_format.PAPER_FILES:  # copies are writable
    os.chmod(os.path.join(folder, name), 0o644)
  assert load_constitution(folder).critique_revision[0].id == "harmful0"

  path = os.path.join(folder, paper_format.CRITIQUE_INSTRUCTIONS)
  raw = _paper_raw(paper_format.CRITIQUE_INSTRUCTIONS)
  raw["harmful3"]["prompt"] = []
  with open(path, "w", encoding="utf-8") as f:
    json.dump(raw, f)
  with pytest.raises(ConstitutionError) as e:
    load_constitution(folder)
  assert str(e.value).startswith(path + ": principle 'harmful3': 'prompt' should be a list")

  with open(path, "w", encoding="utf-8") as f:
    f.write("{not json")
  with pytest.raises(ConstitutionError, match=re.escape(path) + ": not valid JSON"):
    load_constitution(folder)

  cot = os.path.join(folder, paper_format.COT_FEW_SHOT)
  with open(cot, "w", encoding="utf-8") as f:
    json.dump([{"prompt": "\n\nHuman: no slot\nSo the answer is: (A)"}], f)
  os.remove(path)
  with pytest.raises(ConstitutionError, match="missing CritiqueRevisionInstructions.json"):
    load_constitution(folder)
  shutil.copy(os.path.join(PAPER_PROMPTS, paper_format.CRITIQUE_INSTRUCTIONS), path)
  with pytest.raises(ConstitutionError) as e:
    load_constitution(folder)
  assert str(e.value).startswith(cot + ": example [0]: has 0 '{}' slots")

  with pytest.raises(ConstitutionError, match="pass the folder that holds all five"):
    load_constitution(os.path.join(PAPER_PROMPTS, paper_format.MC_INSTRUCTIONS))


@needs_paper
def test_paper_cot_layout_is_ours(paper):
  # Rebuild the paper's first chain-of-thought example from its parts with cot_question.
  ex = paper.cot_few_shot[0]
  head = ("\n\nHuman: Consider the following conversation between a human (H) and an assistant "
          "(A):")
  assert ex.startswith(head)
  body, options = ex[len(head):].split("\n\n{}\n", 1)
  conversation = body[2:].replace("\n\nH:", "\n\nHuman:").replace("\n\nA:", "\n\nAssistant:")
  conversation = "Human:" + conversation[2:] if conversation.startswith("H:") else conversation
  a, b = re.findall(r"\[\[\[(.*?)\]\]\]", options, flags=re.S)
  principle = paper.mc_principles[0]
  question = prompts.cot_question(conversation, principle, a, b)
  think = "\n\nAssistant: Let's think step by step:"
  assert ex.replace("{}", "\n" + principle.text).startswith(question)
  assert question.endswith(think)
  assert prompts.cot_question_template(conversation, a, b) == ex[:ex.index(think) + len(think)]
  prefix = prompts.cot_few_shot_prefix(paper, principle)
  assert prefix == "".join(e.replace("{}", "\n" + principle.text) for e in paper.cot_few_shot)
  assert "{}" not in prefix and prefix.count("So the answer is: (") == 6


# ----------------------------------------------------------------------------------------------
# Prompt strings.


def test_mc_question_layout():
  prompt = "\n\nHuman: Is raw cookie dough safe to eat?\n\nAssistant:"
  conversation = prompts.mc_conversation(prompt)
  assert conversation == "Human: Is raw cookie dough safe to eat?"
  q = prompts.mc_question(conversation, MCPrinciple("x", "Which reply is more accurate? Options:"),
                          "Not entirely: raw flour and eggs carry some risk.", "Yes, always.")
  assert q == ("\n\nConsider the following conversation between a human and an assistant:\n\n"
               "Human: Is raw cookie dough safe to eat?\n\n\n"
               "Which reply is more accurate? Options:\n"
               " (A) [[[Not entirely: raw flour and eggs carry some risk.]]]\n"
               " (B) [[[Yes, always.]]]\n\n"
               "The answer is:")
  assert prompts.MC_OPTIONS == (" (A)", " (B)")
  multi = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye?\n\nAssistant: "
  assert prompts.mc_conversation(multi) == "Human: Hi\n\nAssistant: Hello\n\nHuman: Bye?"
  with pytest.raises(ValueError, match="should end with"):
    prompts.mc_conversation("\n\nHuman: no answer slot")
  with pytest.raises(ValueError, match="no leading or trailing newlines"):
    prompts.mc_question(prompt, "P", "a", "b")


def test_mc_question_matches_the_papers_layout_on_its_own_files(paper):
  """Every few-shot example of the paper's RLMadisonFewShotPrompts.json under every principle of
  its RLMadisonInstructions.json, as loaded by cai_jax: `mc_question` equals the paper's layout
  (../shared/README.md) concatenated here from the raw JSON strings, both option orders."""
  examples = _paper_raw("RLMadisonFewShotPrompts.json")
  principles = _paper_raw("RLMadisonInstructions.json")
  assert len(paper.mc_few_shot) == len(examples) and len(paper.mc_principles) == len(principles)
  head = "\n\nConsider the following conversation between a human and an assistant:\n\n"
  for raw, example in zip(examples, paper.mc_few_shot):
    assert raw["prompt"].startswith("\n\nHuman: ") and raw["prompt"].endswith("\n\nAssistant:")
    conversation = raw["prompt"][len("\n\n"):-len("\n\nAssistant:")]
    good, bad = raw["corrects"][0], raw["incorrects"][0]
    for raw_principle, principle in zip(principles, paper.mc_principles):
      for (a, b), (loaded_a, loaded_b) in (((good, bad), (example.correct, example.incorrect)),
                                           ((bad, good), (example.incorrect, example.correct))):
        expected = (head + conversation + "\n\n\n" + raw_principle[len("\n"):]
                    + "\n (A) [[[" + a + "]]]\n (B) [[[" + b + "]]]\n\nThe answer is:")
        got = prompts.mc_question(prompts.mc_conversation(example.prompt), principle,
                                  loaded_a, loaded_b)
        assert got == expected


def test_mc_few_shot_prefix_alternates():
  c = load_constitution("harmless")
  p = MCPrinciple("k", "Which is kinder? Options:")
  two = Constitution("t", 1, "mem", (), (), (), (p,), (
      MCExample("\n\nHuman: Help?\n\nAssistant:", "Sure.", "No."),
      MCExample("\n\nHuman: Joke?\n\nAssistant:", "Knock knock.", "Never.")), ())
  head = "\n\nConsider the following conversation between a human and an assistant:\n\n"
  assert prompts.mc_few_shot_prefix(two, p) == (
      head + "Human: Help?\n\n\nWhich is kinder? Options:\n (A) [[[Sure.]]]\n (B) [[[No.]]]"
      "\n\nThe answer is: (A)"
      + head + "Human: Joke?\n\n\nWhich is kinder? Options:\n (A) [[[Never.]]]\n"
      " (B) [[[Knock knock.]]]\n\nThe answer is: (B)")
  assert prompts.mc_context(two, "Human: Q", p, "x", "y") == (
      prompts.mc_few_shot_prefix(two, p) + prompts.mc_question("Human: Q", p, "x", "y"))
  full = prompts.mc_few_shot_prefix(c, c.mc_principles[0])
  assert full.count("The answer is: (A)") == 3 and full.count("The answer is: (B)") == 2


def test_cot_layout():
  conversation = "Human: Hi\n\nAssistant: Hello\n\nHuman: Can you help?"
  p = MCPrinciple("k", "Which is kinder? Options:")
  q = prompts.cot_question(conversation, p, "Yes.", "No.")
  assert q == ("\n\nHuman: Consider the following conversation between a human (H) and an "
               "assistant (A):\n\nH: Hi\n\nA: Hello\n\nH: Can you help?\n\n\n"
               "Which is kinder? Options:\n (A) [[[Yes.]]]\n (B) [[[No.]]]\n\n"
               "Assistant: Let's think step by step:")
  c = Constitution("t", 1, "mem", (), (), (), (p,), (), (
      "\n\nHuman: X{}Y\n\nHuman:\nSo the answer is: (A)",
      "\n\nHuman: Z{}W\n\nHuman:\nSo the answer is: (B)"))
  slot = "\nWhich is kinder? Options:"
  assert prompts.cot_few_shot_prefix(c, p) == (
      f"\n\nHuman: X{slot}Y\n\nHuman:\nSo the answer is: (A)"
      f"\n\nHuman: Z{slot}W\n\nHuman:\nSo the answer is: (B)")
  ctx = prompts.cot_context(c, conversation, p, "Yes.", "No.")
  assert ctx == prompts.cot_few_shot_prefix(c, p) + q
  assert prompts.cot_answer_context(ctx, " (A) is kinder.") == (
      ctx + " (A) is kinder.\n\nHuman:\nSo the answer is:")
  assert "\n\nHuman:" in prompts.COT_STOPS


def test_initial_and_critique_contexts(harmless):
  conversation = "\n\nHuman: How do I get revenge on my landlord?\n\nAssistant:"
  assert prompts.initial_prefix(harmless) == "".join(harmless.helpful_few_shot)
  assert prompts.initial_context(harmless, conversation) == (
      "".join(harmless.helpful_few_shot) + conversation)
  p = harmless.critique_revision[0]
  ctx = prompts.critique_context(harmless, conversation, " Slash his tyres.", p)
  assert ctx == ("".join(harmless.critique_revision_few_shot) + conversation
                 + " Slash his tyres." + p.critique_prompt)
  rev = prompts.revision_context(harmless, conversation, " Slash his tyres.", p, " Bad idea.")
  assert rev == ctx + " Bad idea." + p.revision_prompt
  q = harmless.critique_revision[1]
  assert prompts.followup_critique_context(rev, " Talk to him.", q) == (
      rev + " Talk to him." + q.critique_prompt)
  # Each stop list ends the sampled text at the next marker of the layout.
  assert "\n\nRevisionRequest:" in prompts.CRITIQUE_STOPS
  assert "\n\nCritiqueRequest:" in prompts.REVISION_STOPS
  assert prompts.RESPONSE_STOPS == ("\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:")
  for stops in (prompts.CRITIQUE_STOPS, prompts.REVISION_STOPS, prompts.RESPONSE_STOPS):
    assert "\n\nHuman:" in stops and "\n\nAssistant:" in stops


def test_readme_documents_every_field():
  with open(os.path.join(schema.CONSTITUTIONS_DIR, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  fields = set(schema._TOP)
  for section_fields in schema._FIELDS.values():
    fields |= section_fields
  for field in sorted(fields):
    assert f"`{field}`" in readme, field


# ----------------------------------------------------------------------------------------------
# Originality: our texts are our own words, not the paper's.


def _texts(obj):
  if isinstance(obj, str):
    yield obj
  elif isinstance(obj, dict):
    for v in obj.values():
      yield from _texts(v)
  elif isinstance(obj, list):
    for v in obj:
      yield from _texts(v)


def _norm(text):
  return re.sub(r"\s+", " ", text.lower())


@needs_paper
@pytest.mark.parametrize("name", ["harmless", "caveats", "helpful"])
def test_our_texts_are_not_the_papers(name):
  n = 40
  paper_texts = []
  for f in paper_format.PAPER_FILES:
    paper_texts += list(_texts(_paper_raw(f)))
  grams = set()
  for t in paper_texts:
    t = _norm(t)
    grams.update(t[i:i + n] for i in range(len(t) - n + 1))
  with open(os.path.join(schema.CONSTITUTIONS_DIR, name + ".json"), encoding="utf-8") as f:
    ours = list(_texts(json.load(f)))
  copied = []
  for t in ours:
    t = _norm(t)
    copied += [t[i:i + n] for i in range(len(t) - n + 1) if t[i:i + n] in grams]
  assert not copied, copied[:3]
