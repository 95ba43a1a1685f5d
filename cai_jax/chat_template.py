"""Rendering a checkpoint's own chat template (jinja2), as transformers' `apply_chat_template`
does: a sandboxed environment with trim_blocks and lstrip_blocks, `raise_exception` and the
special tokens available to the template."""

from __future__ import annotations

import functools
import json
import os
from typing import Mapping, Sequence


class ChatTemplateError(ValueError):
  """A checkpoint without a chat template, or a template that fails on the messages."""


@functools.lru_cache(maxsize=8)
def _compile(template: str):
  import jinja2.ext  # not imported by `import jinja2` alone
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise ChatTemplateError(f"the chat template refused the messages: {message}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def render(template: str | None, messages: Sequence[Mapping[str, str]], *,
           add_generation_prompt: bool, special_tokens: Mapping[str, str | None] | None = None,
           source: str = "the checkpoint") -> str:
  """The text of `messages` ([{"role": "user" | "assistant" | "system", "content": ...}]) in the
  template's format; with `add_generation_prompt`, followed by the opening of an assistant turn."""
  if not template:
    raise ChatTemplateError(f"{source} has no chat template (tokenizer_config.json "
                            "'chat_template' or GGUF 'tokenizer.chat_template')")
  return _compile(template).render(messages=list(messages),
                                   add_generation_prompt=add_generation_prompt,
                                   **dict(special_tokens or {}))


def read_folder_template(folder: str) -> str | None:
  """A checkpoint folder's chat template: tokenizer_config.json's `chat_template`, else
  chat_template.jinja (newer transformers save it there), else None."""
  cfg_path = os.path.join(folder, "tokenizer_config.json")
  if os.path.isfile(cfg_path):
    with open(cfg_path) as f:
      template = json.load(f).get("chat_template")
    if template:
      return template
  template_file = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(template_file):
    with open(template_file) as f:
      return f.read()
  return None


def gguf_template(reader) -> str | None:
  """A GGUF's `tokenizer.chat_template`, or None."""
  field = reader.fields.get("tokenizer.chat_template")
  return field.contents() if field is not None else None
