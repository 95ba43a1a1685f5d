"""How the method's transcripts become the text a model reads: `hh` or the checkpoint's chat.

Every stage builds its texts in the paper's layout (`prompts`): blocks introduced by
"\\n\\nHuman:", "\\n\\nAssistant:", "\\n\\nCritiqueRequest:", "\\n\\nCritique:",
"\\n\\nRevisionRequest:", "\\n\\nRevision:", and for the feedback questions the MC header and
"\\n\\nThe answer is:". Records keep that layout whatever the format, so files stay comparable
across models. A format maps such a text onto the model's input at the last moment:

- `hh` (the default) is the identity: the paper's texts, byte for byte, ending with EOS.
- `chat` renders the same turns with the checkpoint's own chat template (jinja2): the red-team
  prompt and the critique / revision requests are user turns; answers, critiques and revisions
  assistant turns; a feedback question is a user turn and its answer ("The answer is: (A)", or
  the chain of thought ending "So the answer is: (A)") is read from the assistant turn. Block
  labels that only separate turns (Human, CritiqueRequest, ...) are dropped; responses end with
  the template's end-of-turn token, which is also where sampling stops.

The interface every stage uses (all text in, text or ids out):
  context(text)   text ending with an open assistant block -> what the model continues
  prefix(text)    closed turns (few-shot demonstrations) -> a prefix of every context after it
  response(text)  a response as it follows `context` (chat: without the HH leading space)
  end_id          the id appended after a finished response (EOS, or the end-of-turn token)
  stop_ids        ids that end sampling
"""

from __future__ import annotations

import re
from typing import Sequence

from cai_jax.chat_template import ChatTemplateError
from cai_jax.constitution import prompts as P
from cai_jax.constitution import schema

FORMATS = ("hh", "chat")

_USER, _ASSISTANT = "user", "assistant"
_LABELS = {m.strip("\n").rstrip(":"): role for m, role in (
    (schema.HUMAN, _USER), (schema.ASSISTANT, _ASSISTANT),
    (schema.CRITIQUE_REQUEST, _USER), (schema.CRITIQUE, _ASSISTANT),
    (schema.REVISION_REQUEST, _USER), (schema.REVISION, _ASSISTANT))}
_DIALOGUE = re.compile(r"\n\n(" + "|".join(sorted(_LABELS, key=len, reverse=True)) + "):")
_MC = re.compile("(" + re.escape(P.MC_HEADER) + "|" + re.escape(P.MC_ANSWER) + ")")
# In chat the chain of thought's final answer stays in the assistant turn (the paper's layout
# puts "So the answer is:" in a Human block, which would leave the answer in a user turn).
COT_ANSWER_IN_TURN = "\n\nSo the answer is:"


def turns(text: str) -> list[tuple[str, str]]:
  """[(role, content)] of a transcript in the paper's layout; contents as written (not
  stripped), consecutive blocks of one role joined. A feedback question keeps its words ("Consider
  the following conversation ...", "The answer is:"); other labels are dropped."""
  if text.startswith(P.MC_HEADER):
    parts = _MC.split(text)[1:]  # [marker, body, marker, body, ...]
    raw = [(_USER if m == P.MC_HEADER else _ASSISTANT, m.lstrip("\n") + body)
           for m, body in zip(parts[::2], parts[1::2])]
  else:
    text = text.replace(P.COT_ANSWER, COT_ANSWER_IN_TURN)
    matches = list(_DIALOGUE.finditer(text))
    if not matches or matches[0].start() != 0:
      raise ValueError(f"not a transcript in the paper's layout (it should start with "
                       f"'\\n\\nHuman:' or the feedback question's header): {text[:60]!r}...")
    raw = []
    for i, m in enumerate(matches):
      end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
      raw.append((_LABELS[m.group(1)], text[m.end():end]))
  out: list[tuple[str, str]] = []
  for role, content in raw:
    if out and out[-1][0] == role:
      out[-1] = (role, out[-1][1].rstrip() + "\n\n" + content.lstrip())
    else:
      out.append((role, content))
  return out


class HHFormat:
  """The paper's layout as it is: every method is the identity, responses end with EOS."""

  name = "hh"

  def __init__(self, tokenizer=None):
    eos = getattr(tokenizer, "eos_id", None)  # None for callers that only build texts
    self.end_id = eos
    self.stop_ids = (eos,) if eos is not None else ()

  def context(self, text: str) -> str:
    return text

  def prefix(self, text: str) -> str:
    return text

  def response(self, text: str) -> str:
    return text


class ChatFormat:
  """The same turns in the checkpoint's chat template (see the module docstring)."""

  name = "chat"

  def __init__(self, tokenizer):
    source = getattr(tokenizer, "source", "the checkpoint")
    render = getattr(tokenizer, "render_chat", None)
    if render is None or not getattr(tokenizer, "chat_template", None):
      raise ChatTemplateError(
          f"conversation.format='chat' needs a chat template, and {source} has none "
          "(tokenizer_config.json 'chat_template', chat_template.jinja or GGUF "
          "'tokenizer.chat_template'); use conversation.format='hh' for this checkpoint")
    ends = tuple(tokenizer.end_of_turn_ids)
    if not ends:
      raise ChatTemplateError(f"conversation.format='chat': {source} has no end-of-turn token "
                              "(<|im_end|>, <|eot_id|>, <end_of_turn>) to end a response with")
    self._render = render
    self.end_id = ends[0]
    self.stop_ids = tuple(dict.fromkeys(ends + (tokenizer.eos_id,)))
    bos = tokenizer.bos_id
    # A template that writes BOS itself would double the one the tokenizer adds.
    self._bos_text = tokenizer.id_to_piece(bos) if tokenizer.adds_bos and bos is not None \
        else ""

  def _text(self, messages, add_generation_prompt: bool) -> str:
    if not messages and not add_generation_prompt:
      return ""
    out = self._render(messages, add_generation_prompt=add_generation_prompt)
    if self._bos_text and out.startswith(self._bos_text):
      out = out[len(self._bos_text):]
    return out

  @staticmethod
  def _messages(closed: Sequence[tuple[str, str]]) -> list[dict]:
    return [{"role": role, "content": content.strip()} for role, content in closed]

  def context(self, text: str) -> str:
    ts = turns(text)
    role, last = ts[-1]
    if role != _ASSISTANT:
      raise ValueError(f"a context must end with an open assistant block, got a {role} turn: "
                       f"...{text[-60:]!r}")
    return self._text(self._messages(ts[:-1]), True) + last.lstrip()

  def prefix(self, text: str) -> str:
    return self._text(self._messages(turns(text)), False) if text else ""

  def response(self, text: str) -> str:
    return text.strip()


def make_format(name: str, tokenizer):
  """The format `conversation.format` names, for this tokenizer (ValueError on a bad name,
  ChatTemplateError when `chat` meets a checkpoint without a template)."""
  if name == "hh":
    return HHFormat(tokenizer)
  if name == "chat":
    return ChatFormat(tokenizer)
  raise ValueError(f"conversation.format must be one of {', '.join(FORMATS)}, got {name!r}")


def split_prefix(fmt, prefix_text: str, context_text: str) -> tuple[str, str]:
  """(model prefix, the rest of the model context) for a context written after `prefix_text`
  (both in the paper's layout), so a sampler can prefill the prefix once."""
  if not context_text.startswith(prefix_text):
    raise ValueError("the context does not start with its prefix")
  head, full = fmt.prefix(prefix_text), fmt.context(context_text)
  if not full.startswith(head):
    raise ValueError(f"the {fmt.name} format renders the prefix differently on its own "
                     f"({head[-60:]!r}) and inside the context; the template is not "
                     "prefix-stable, so the prefix cannot be computed once")
  return head, full[len(head):]
