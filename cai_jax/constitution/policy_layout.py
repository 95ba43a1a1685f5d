"""What the policy reads before a prompt, decided once for every stage that samples it.

The preference model is trained on answers that `sample_pairs` sampled and then asked, in
`rl_train`, to score answers sampled by the same policy: both must come from the same input
distribution, and so must the initial answers of `sl_generate` and the evaluation's answers.
`conversation.policy_prefix` names that input, and `PolicyLayout` builds it for all four stages:

- `none` (the default): the prompt alone. `sl_train` finetunes on (prompt, revision) and
  (prompt, helpful answer) rows without any prefix, so after SL-CAI this is the policy's own
  distribution (the few-shot exchanges are distilled into it), and PPO pays for no prefix.
- `helpful_exchanges`: the constitution's helpful exchanges first (`prompts.initial_prefix`),
  which makes a pretrained base model answer like an assistant.

`conversation.format` ('hh' or 'chat') renders either choice: with 'chat' the prompt (and the
exchanges, as closed turns) go through the checkpoint's chat template. Texts are built in the
paper's layout and rendered at the end, as everywhere else (`conversation_format`).
"""

from __future__ import annotations

from cai_jax.constitution import prompts as P
from cai_jax.constitution.conversation_format import split_prefix

POLICY_PREFIXES = ("none", "helpful_exchanges")


def prefix_text(constitution, policy_prefix: str) -> str:
  """The text before every prompt, in the paper's layout ('' for `none`)."""
  if policy_prefix == "none":
    return ""
  if policy_prefix == "helpful_exchanges":
    if constitution is None:
      raise ValueError("conversation.policy_prefix='helpful_exchanges' needs a constitution")
    return P.initial_prefix(constitution)
  raise ValueError(f"conversation.policy_prefix must be one of {', '.join(POLICY_PREFIXES)}, "
                   f"got {policy_prefix!r}")


class PolicyLayout:
  """The policy's input for a prompt (a conversation ending with "\\n\\nAssistant:"), split into
  the part shared by every prompt (`model_prefix`, which a sampler prefills once) and the rest:
  `model_prefix + rest(prompt) == text(prompt)`, the exact string the model continues."""

  def __init__(self, fmt, constitution=None, policy_prefix: str = "none"):
    self.fmt = fmt
    self.name = policy_prefix
    self.prefix_text = prefix_text(constitution, policy_prefix)
    self.model_prefix = fmt.prefix(self.prefix_text) if self.prefix_text else ""

  def rest(self, prompt: str) -> str:
    if not self.prefix_text:
      return self.fmt.context(prompt)
    return split_prefix(self.fmt, self.prefix_text, self.prefix_text + prompt)[1]

  def text(self, prompt: str) -> str:
    return self.model_prefix + self.rest(prompt)

  def prefill(self, sampler):
    """The sampler's PrefixCache of `model_prefix` (None when there is none)."""
    return sampler.prefill_prefix(self.model_prefix) if self.model_prefix else None


def prefix_name(config) -> str:
  """`config.conversation.policy_prefix` ('none' where a config has no such field), checked:
  ConfigError on a value outside POLICY_PREFIXES, so a job can fail before any compute."""
  from cai_jax.config_defaults import ConfigError
  section = config.get("conversation")
  name = section.get("policy_prefix", "none") if section is not None else "none"
  if name not in POLICY_PREFIXES:
    raise ConfigError(f"conversation.policy_prefix must be one of {', '.join(POLICY_PREFIXES)}, "
                      f"got {name!r}")
  return name


def from_config(config, fmt, constitution=None) -> PolicyLayout:
  """The layout `config.conversation.policy_prefix` names (ConfigError on a bad value)."""
  from cai_jax.config_defaults import ConfigError
  name = prefix_name(config)
  if name == "helpful_exchanges" and constitution is None:
    from cai_jax.constitution.loading import load_constitution
    constitution = load_constitution(config.constitution)
  try:
    return PolicyLayout(fmt, constitution, name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
