"""The exact strings sent to the model at each CAI step. Pure string functions, byte-exact.

Notation: a *prompt* is a conversation in the HH format ending with the turn to be answered,
`"\\n\\nHuman: ...\\n\\nAssistant:"`; a *response* is the text sampled after it, with its own
leading space (`" Sure, ..."`); a *critique* likewise is the text sampled after `"Critique:"`.

Initial answer (SL-CAI, step 1)::

    initial_context(c, prompt) = initial_prefix(c) + prompt
    initial_prefix(c)          = "".join(c.helpful_few_shot)       # "\\n\\nHuman: ..\\n\\nAssistant: .."

Critique and revision (SL-CAI, step 2), the paper's layout::

    critique_context = critique_revision_prefix(c) + prompt + response + principle.critique_prompt
                       # ... "\\n\\nCritiqueRequest: <request>\\n\\nCritique:"
    revision_context = critique_context + critique + principle.revision_prompt
                       # ... "\\n\\nRevisionRequest: <request>\\n\\nRevision:"

`critique_revision_prefix(c)` joins the worked demonstrations with "" (each starts with
`"\\n\\nHuman:"`). Normalization of the paper's `CritiqueRevisionFewShotPrompts.json`: four of its
five transcripts end with `"\\n\\nHuman:"` and one does not; `paper_format` strips that trailing
`"\\n\\nHuman:"` from each, so every demonstration ends with its revision text and the next one
(or the red-team prompt) supplies its own `"\\n\\nHuman:"`. Nothing else is changed. Sample the
critique with `CRITIQUE_STOPS` and the revision with `REVISION_STOPS`. Further rounds with other
principles continue the same transcript (`followup_critique_context`).

Multiple choice (RLAIF feedback), the paper's layout::

    mc_question = "\\n\\nConsider the following conversation between a human and an assistant:\\n\\n"
                  + conversation + "\\n\\n\\n" + principle.text
                  + "\\n (A) [[[" + response_a + "]]]\\n (B) [[[" + response_b + "]]]"
                  + "\\n\\nThe answer is:"

scored on the continuations `MC_OPTIONS = (" (A)", " (B)")`. `conversation` is the prompt without
its leading "\\n\\n" and its final "\\n\\nAssistant:" (`mc_conversation`): it starts with
"Human:" and ends with the last human turn, as in the paper's evaluation files. Responses go
between the brackets verbatim: strip sampled responses first (the paper's examples have no
leading space). `mc_few_shot_prefix` renders the labelled examples in the same layout, each
followed by its correct answer; the correct response is option (A) for examples 0, 2, 4, ... and
(B) for examples 1, 3, ..., so the answer is not always the same letter.

Chain of thought, the layout of the paper's `RLMadisonPrecogFewShotPrompts.json`::

    cot_question = "\\n\\nHuman: Consider the following conversation between a human (H) and an "
                   "assistant (A):" + "\\n\\nH: ...\\n\\nA: ...\\n\\nH: ..."   # the conversation relabelled
                   + "\\n\\n" + "\\n" + principle.text
                   + "\\n (A) [[[" + a + "]]]\\n (B) [[[" + b + "]]]"
                   + "\\n\\nAssistant: Let's think step by step:"

The model then writes its reasoning (stop at `COT_STOPS`), and the answer is scored after
`cot_answer_context(...) = cot context + reasoning + "\\n\\nHuman:\\nSo the answer is:"` on
`MC_OPTIONS`. A few-shot example is the same text with `"{}"` in place of `"\\n" +
principle.text` (the paper's slot: its principles carry that leading "\\n"), followed by
` <reasoning>\\n\\nHuman:\\nSo the answer is: (A)`. `cot_few_shot_prefix` fills the slot of each
example with the principle being asked and joins them with "".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
  from cai_jax.constitution.schema import (Constitution, CritiqueRevisionPrinciple,
                                           MCPrinciple)

# Stop strings for sampling. Each ends the text at the next marker of the layout.
RESPONSE_STOPS: tuple[str, ...] = ("\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:")
CRITIQUE_STOPS: tuple[str, ...] = ("\n\nRevisionRequest:", "\n\nCritiqueRequest:",
                                   "\n\nHuman:", "\n\nAssistant:", "\n\nRevision:")
# A revision ends where the model starts any further block of the layout, including a second
# "Revision:" or "Critique:" of its own (a small model often writes one).
REVISION_STOPS: tuple[str, ...] = ("\n\nCritiqueRequest:", "\n\nHuman:", "\n\nAssistant:",
                                   "\n\nRevisionRequest:", "\n\nRevision:", "\n\nCritique:")
COT_STOPS: tuple[str, ...] = ("\n\nHuman:", "\n\nAssistant:")

MC_OPTIONS = (" (A)", " (B)")
MC_HEADER = "\n\nConsider the following conversation between a human and an assistant:\n\n"
MC_ANSWER = "\n\nThe answer is:"
COT_HEADER = ("\n\nHuman: Consider the following conversation between a human (H) and an "
              "assistant (A):")
COT_THINK = "\n\nAssistant: Let's think step by step:"
COT_ANSWER = "\n\nHuman:\nSo the answer is:"

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"


# ----------------------------------------------------------------------------------------------
# SL-CAI: initial answer, critique, revision.


def initial_prefix(c: Constitution) -> str:
  """The helpful exchanges that precede a red-team prompt when sampling the initial answer."""
  return "".join(c.helpful_few_shot)


def initial_context(c: Constitution, conversation: str) -> str:
  """initial_prefix(c) + conversation (a prompt ending with "\\n\\nAssistant:")."""
  return initial_prefix(c) + conversation


def critique_revision_prefix(c: Constitution) -> str:
  """The worked critique/revision demonstrations joined with "" (see the module docstring)."""
  return "".join(c.critique_revision_few_shot)


def _principle(c: Constitution, principle) -> CritiqueRevisionPrinciple:
  return c.principle(principle) if isinstance(principle, str) else principle


def critique_context(c: Constitution, conversation: str, response: str,
                     principle: Union[CritiqueRevisionPrinciple, str]) -> str:
  """Prefix + conversation + response + "\\n\\nCritiqueRequest: ...\\n\\nCritique:".

  `principle` is a CritiqueRevisionPrinciple or its id in `c`."""
  return (critique_revision_prefix(c) + conversation + response
          + _principle(c, principle).critique_prompt)


def revision_context(c: Constitution, conversation: str, response: str,
                     principle: Union[CritiqueRevisionPrinciple, str], critique: str) -> str:
  """critique_context(...) + critique + "\\n\\nRevisionRequest: ...\\n\\nRevision:"."""
  p = _principle(c, principle)
  return critique_context(c, conversation, response, p) + critique + p.revision_prompt


def followup_critique_context(revision_ctx: str, revision: str,
                              principle: CritiqueRevisionPrinciple) -> str:
  """A further round: the previous revision context + its revision + the next critique request,
  so the model critiques its latest revision with the whole exchange in view."""
  return revision_ctx + revision + principle.critique_prompt


# ----------------------------------------------------------------------------------------------
# Multiple choice.


def mc_conversation(prompt: str) -> str:
  """"\\n\\nHuman: q\\n\\nAssistant:" -> "Human: q": the conversation as the MC question shows it.

  Drops the leading newlines and the final "\\n\\nAssistant:" (a trailing space after it too);
  raises ValueError when the prompt does not end with "\\n\\nAssistant:"."""
  text = prompt.rstrip(" ")
  if not text.endswith(_ASSISTANT):
    raise ValueError(f"prompt should end with '\\n\\nAssistant:', got ...{prompt[-40:]!r}")
  text = text[:-len(_ASSISTANT)].lstrip("\n")
  if not text.startswith("Human:"):
    raise ValueError(f"prompt should start with '\\n\\nHuman:', got {prompt[:40]!r}...")
  return text


def _check_conversation(conversation: str) -> None:
  if conversation != conversation.strip("\n") or conversation.endswith("Assistant:"):
    raise ValueError("conversation should have no leading or trailing newlines and no final "
                     "'Assistant:' (use mc_conversation(prompt))")


def _text(principle) -> str:
  return principle if isinstance(principle, str) else principle.text


def mc_question(conversation: str, principle: Union[MCPrinciple, str], response_a: str,
                response_b: str) -> str:
  """The paper's multiple-choice question (layout in the module docstring); `conversation` as
  returned by mc_conversation, `principle` an MCPrinciple or its text."""
  _check_conversation(conversation)
  return (MC_HEADER + conversation + "\n\n\n" + _text(principle)
          + "\n (A) [[[" + response_a + "]]]\n (B) [[[" + response_b + "]]]" + MC_ANSWER)


def mc_few_shot_order(index: int) -> bool:
  """True when few-shot example `index` shows its correct response as option (A)."""
  return index % 2 == 0


def _per_example(principle, n: int) -> list:
  """One principle per few-shot example: `principle` for all, or a sequence of n (the paper's
  independently drawn principles)."""
  if isinstance(principle, (list, tuple)):
    if len(principle) != n:
      raise ValueError(f"{len(principle)} principles for {n} few-shot examples")
    return list(principle)
  return [principle] * n


def mc_few_shot_prefix(c: Constitution, principle) -> str:
  """c.mc_few_shot rendered as questions under `principle` (one MCPrinciple or text for every
  example, or a sequence with one per example), each followed by its correct option; example i
  shows the correct response as (A) when i is even, as (B) when i is odd."""
  out = []
  for i, (ex, pr) in enumerate(zip(c.mc_few_shot, _per_example(principle, len(c.mc_few_shot)))):
    conv = mc_conversation(ex.prompt)
    if mc_few_shot_order(i):
      out.append(mc_question(conv, pr, ex.correct, ex.incorrect) + MC_OPTIONS[0])
    else:
      out.append(mc_question(conv, pr, ex.incorrect, ex.correct) + MC_OPTIONS[1])
  return "".join(out)


def mc_context(c: Constitution, conversation: str, principle: Union[MCPrinciple, str],
               response_a: str, response_b: str, example_principles=None) -> str:
  """mc_few_shot_prefix + mc_question: the full text scored on MC_OPTIONS; the examples under
  `principle` too unless `example_principles` gives one per example."""
  return (mc_few_shot_prefix(c, principle if example_principles is None else example_principles)
          + mc_question(conversation, principle, response_a, response_b))


# ----------------------------------------------------------------------------------------------
# Chain of thought.


def cot_conversation(conversation: str) -> str:
  """"Human: q\\n\\nAssistant: a\\n\\nHuman: r" -> "\\n\\nH: q\\n\\nA: a\\n\\nH: r" (the CoT
  layout's relabelled turns, each introduced by a blank line)."""
  _check_conversation(conversation)
  text = "\n\n" + conversation
  return text.replace(_HUMAN, "\n\nH:").replace(_ASSISTANT, "\n\nA:")


def _cot_layout(conversation: str, principle_block: str, response_a: str,
                response_b: str) -> str:
  return (COT_HEADER + cot_conversation(conversation) + "\n\n" + principle_block
          + "\n (A) [[[" + response_a + "]]]\n (B) [[[" + response_b + "]]]" + COT_THINK)


def cot_question_template(conversation: str, response_a: str, response_b: str) -> str:
  """cot_question with the principle left as the paper's "{}" slot (for few-shot examples)."""
  return _cot_layout(conversation, "{}", response_a, response_b)


def cot_slot(principle: Union[MCPrinciple, str]) -> str:
  """What fills a CoT example's "{}" slot: "\\n" + the principle text (the paper's own
  principles carry that leading newline)."""
  return "\n" + _text(principle)


def cot_question(conversation: str, principle: Union[MCPrinciple, str], response_a: str,
                 response_b: str) -> str:
  """The chain-of-thought question, ending with "\\n\\nAssistant: Let's think step by step:"."""
  return _cot_layout(conversation, cot_slot(principle), response_a, response_b)


def cot_few_shot_prefix(c: Constitution, principle) -> str:
  """c.cot_few_shot with each "{}" slot filled by cot_slot(principle) (one principle for every
  example, or a sequence with one per example), joined with ""."""
  per = _per_example(principle, len(c.cot_few_shot))
  return "".join(ex.replace("{}", cot_slot(pr)) for ex, pr in zip(c.cot_few_shot, per))


def cot_context(c: Constitution, conversation: str, principle: Union[MCPrinciple, str],
                response_a: str, response_b: str, example_principles=None) -> str:
  """cot_few_shot_prefix + cot_question: the text the model continues with its reasoning; the
  examples under `principle` too unless `example_principles` gives one per example."""
  return (cot_few_shot_prefix(c, principle if example_principles is None
                              else example_principles)
          + cot_question(conversation, principle, response_a, response_b))


def cot_answer_context(cot_ctx: str, reasoning: str) -> str:
  """After sampling `reasoning` (stopped at COT_STOPS): the text scored on MC_OPTIONS."""
  return cot_ctx + reasoning + COT_ANSWER
