"""The Anthropic HH dialogue format: "\n\nHuman: ...\n\nAssistant: ..." and its loss masks.

A conversation string alternates Human and Assistant turns, each introduced by its marker. For
training, every text piece is tokenised on its own and the ids are concatenated, so a loss mask
can cover exactly the assistant's words (the markers themselves are context, not targets).
"""

from __future__ import annotations

import re

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_MARKER = re.compile(r"\n\n(Human|Assistant):")


def parse(text: str) -> list[tuple[str, str]]:
  """[(role, content)] with role 'Human' or 'Assistant'; content keeps its leading space.

  Raises ValueError when the text does not start with a marker or roles do not alternate."""
  matches = list(_MARKER.finditer(text))
  if not matches or matches[0].start() != 0:
    raise ValueError("conversation must start with '\\n\\nHuman:'")
  turns = []
  for i, m in enumerate(matches):
    end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
    turns.append((m.group(1), text[m.end():end]))
  for i, (role, _) in enumerate(turns):
    if role != ("Human" if i % 2 == 0 else "Assistant"):
      raise ValueError(f"turn {i + 1} is {role!r}; turns must alternate Human / Assistant")
  return turns


def format_turns(turns: list[tuple[str, str]]) -> str:
  return "".join(f"\n\n{role}:{content}" for role, content in turns)


def tokenize_conversation(tokenizer, text: str, *, add_bos: bool = True,
                          append_eos: bool = False) -> tuple[list[int], list[bool]]:
  """(ids, mask): mask is True on the assistant turns' content tokens (and the final EOS)."""
  ids = list(tokenizer.start_ids) if add_bos else []
  mask = [False] * len(ids)
  for role, content in parse(text):
    marker = tokenizer.encode(HUMAN if role == "Human" else ASSISTANT, add_bos=False)
    body = tokenizer.encode(content, add_bos=False) if content else []
    ids += marker + body
    mask += [False] * len(marker) + [role == "Assistant"] * len(body)
  if append_eos:
    ids.append(tokenizer.eos_id)
    mask.append(True)
  return ids, mask


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str, *,
                               append_eos: bool = True, fmt=None) -> tuple[list[int], list[bool]]:
  """BOS (where the tokenizer uses one) + prompt + completion (+ EOS); the mask covers the
  completion and the EOS. With a conversation format (`cai_jax.constitution.
  conversation_format`), the prompt and completion are what the model reads in that format and
  the completion ends with the format's end id (the chat template's end-of-turn token)."""
  if fmt is not None:
    prompt, completion = fmt.context(prompt), fmt.response(completion)
  p = list(tokenizer.start_ids) + tokenizer.encode(prompt, add_bos=False)
  c = tokenizer.encode(completion, add_bos=False) if completion else []
  if append_eos:
    c = c + [tokenizer.eos_id if fmt is None else fmt.end_id]
  return p + c, [False] * len(p) + [True] * len(c)
