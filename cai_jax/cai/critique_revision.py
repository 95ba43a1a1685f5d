"""The SL-CAI loop: answer a red-team prompt, then critique and revise the answer N times.

One batch of prompts moves through the stages together, each stage one `Sampler.generate` call
over the batch with a prefix that is prefilled once per run:

  answer     the policy's prefix (policy_layout)  | prompt                        -> response
  critique   critique_revision_prefix (demos)   | prompt + response + CritiqueRequest
  revision   same prefix                        | ... + critique + RevisionRequest -> revision

Round r > 1 critiques the latest revision: by default the transcript continues (the paper's
layout: the next CritiqueRequest follows the previous revision), or, with
`continue_transcript=False`, a fresh context holds only prompt + latest revision.
`skip_critique=True` asks for the revision directly (no critique is sampled).

Principles are drawn per (seed, record id, round) with replacement, so a record's principles do
not depend on batching or on restarts. Degenerate outputs (empty, repeated lines, cut off at the
token budget) are flagged on the record and counted, never silently kept as good data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import numpy as np

from cai_jax.constitution import prompts as P
from cai_jax.constitution.conversation_format import HHFormat, split_prefix
from cai_jax.sampling.record_keys import fold_rows
from cai_jax.sampling.sampler import FINISH_LENGTH


@dataclasses.dataclass(frozen=True)
class Settings:
  rounds: int = 4
  skip_critique: bool = False
  continue_transcript: bool = True
  max_response_tokens: int = 128
  max_critique_tokens: int = 128
  max_revision_tokens: int = 128
  seed: int = 0


def draw_principles(constitution, record_id: str, rounds: int, seed: int) -> list:
  """`rounds` principles drawn uniformly with replacement, from (seed, record id) alone."""
  digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  idx = rng.integers(0, len(constitution.critique_revision), size=rounds)
  return [constitution.critique_revision[i] for i in idx]


def degenerate_flags(text: str, finish_reason: str) -> list[str]:
  """Why an output should not be trusted as training data (empty list: looks fine)."""
  flags = []
  if not text.strip():
    flags.append("empty")
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  if len(lines) >= 3 and len(set(lines)) <= len(lines) // 2:
    flags.append("repeated_lines")
  words = text.split()
  if len(words) >= 24:
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if len(set(grams)) < 0.5 * len(grams):
      flags.append("repetitive")
  if finish_reason == FINISH_LENGTH:
    flags.append("runaway_length")
  return flags


class CritiqueReviser:
  """Runs the loop for batches of prompts with one sampler and one constitution. Contexts are
  built in the paper's layout and reach the model through `fmt` (a conversation format; the
  paper's own layout when None)."""

  def __init__(self, sampler, constitution, settings: Settings, strategy, fmt=None,
               answer_prefix_text: str | None = None):
    self.sampler = sampler
    self.c = constitution
    self.settings = settings
    self.strategy = strategy
    self.fmt = fmt or HHFormat(getattr(sampler, "tokenizer", None))
    # What the policy reads before a prompt (`policy_layout`); None: the helpful exchanges.
    self.answer_prefix_text = (P.initial_prefix(constitution) if answer_prefix_text is None
                               else answer_prefix_text)
    self.revise_prefix_text = P.critique_revision_prefix(constitution)
    self._answer_prefix = self._prefill(self.answer_prefix_text)
    self._revise_prefix = self._prefill(self.revise_prefix_text)
    self.tokens_generated = 0

  def _prefill(self, text: str):
    model_text = self.fmt.prefix(text)
    return self.sampler.prefill_prefix(model_text) if model_text else None

  def _sample(self, contexts: Sequence[str], prefix_text: str, prefix, max_tokens: int,
              stop: Sequence[str], keys):
    rows = [split_prefix(self.fmt, prefix_text, ctx)[1] for ctx in contexts]
    out = self.sampler.generate(rows, max_new_tokens=max_tokens, strategy=self.strategy,
                                keys=keys, stop=stop, prefix=prefix)
    self.tokens_generated += sum(out.num_tokens)
    return out

  def answer(self, conversations: Sequence[str], keys):
    """Answers to the conversations after `answer_prefix_text` (a SampleOutput); the first step
    of `run`, and the helpful answers the SL file mixes in. `keys`: one PRNG key per
    conversation ([N, 2])."""
    return self._sample([self.answer_prefix_text + p for p in conversations],
                        self.answer_prefix_text, self._answer_prefix,
                        self.settings.max_response_tokens, P.RESPONSE_STOPS, keys)

  def run(self, items: Sequence[tuple[str, str]], keys) -> list[dict]:
    """items: (record id, prompt); keys: one PRNG key per item ([N, 2]; the answer, each
    critique and each revision draw from their own `fold_in` of it, so a record's text does not
    depend on the batch it is in). Returns one record body per item (without provenance)."""
    s = self.settings
    ids = [i for i, _ in items]
    conversations = [p for _, p in items]
    step_keys = functools.partial(fold_rows, keys)
    first = self.answer(conversations, step_keys(0))
    records = [{"id": rid, "prompt": conv, "initial_response": text, "rounds": [],
                "flags": [f"initial:{f}" for f in degenerate_flags(text, reason)],
                "truncated": trunc}
               for rid, conv, text, reason, trunc in zip(ids, conversations, first.texts,
                                                         first.finish_reasons, first.truncated)]
    principles = [draw_principles(self.c, rid, s.rounds, s.seed) for rid in ids]
    latest = list(first.texts)
    transcript = [None] * len(items)  # the last revision context, when continuing transcripts
    for r in range(s.rounds):
      chosen = [pr[r] for pr in principles]
      if transcript[0] is not None and s.continue_transcript:
        critique_ctx = [P.followup_critique_context(t, rev, p)
                        for t, rev, p in zip(transcript, latest, chosen)]
      else:
        critique_ctx = [P.critique_context(self.c, conv, resp, p)
                        for conv, resp, p in zip(conversations, latest, chosen)]
      if s.skip_critique:
        critiques = [""] * len(items)
        crit_reasons = [None] * len(items)
        # the revision request follows the response directly
        revision_ctx = [ctx[:-len(p.critique_prompt)] + p.revision_prompt
                        for ctx, p in zip(critique_ctx, chosen)]
      else:
        out = self._sample(critique_ctx, self.revise_prefix_text, self._revise_prefix,
                           s.max_critique_tokens, P.CRITIQUE_STOPS, step_keys(1 + 2 * r))
        critiques, crit_reasons = out.texts, out.finish_reasons
        revision_ctx = [ctx + crit + p.revision_prompt
                        for ctx, crit, p in zip(critique_ctx, critiques, chosen)]
      out = self._sample(revision_ctx, self.revise_prefix_text, self._revise_prefix,
                         s.max_revision_tokens, P.REVISION_STOPS, step_keys(2 + 2 * r))
      for rec, p, crit, crit_reason, rev, rev_reason, trunc in zip(
          records, chosen, critiques, crit_reasons, out.texts, out.finish_reasons, out.truncated):
        rec["rounds"].append({"principle_id": p.id, "critique": crit, "revision": rev})
        if crit_reason is not None:
          rec["flags"] += [f"round{r + 1}.critique:{f}" for f in degenerate_flags(crit, crit_reason)]
        rec["flags"] += [f"round{r + 1}.revision:{f}" for f in degenerate_flags(rev, rev_reason)]
        rec["truncated"] = rec["truncated"] or trunc
      latest = list(out.texts)
      transcript = revision_ctx
    for rec, final in zip(records, latest):
      rec["final"] = final
    return records
