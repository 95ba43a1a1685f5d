"""Preference-model and labeller evaluation: rewards for pairs, accuracy, calibration.

- `PMScorer` computes both rewards of every pair with a saved preference model (sequences built
  exactly as in training: `preferences.tokenize` with the model's `append_eos`), batched by
  length and run under a mesh like training.
- `pair_report` turns the rewards of (better, worse) pairs into accuracy (r_better > r_worse; a
  tie counts as half), the mean BT loss -log sigmoid(r_better - r_worse), and calibration of
  q = sigmoid(r_better - r_worse) (`calibration.pair_calibration`: symmetric points, equal-width
  bins, ECE).
- `labeller_agreement` scores the AI labeller against human labels: each feedback label is
  matched to the human comparison with the same prompt and the same two responses (in either
  order; the pairs file the labeller saw is typically written by
  `preferences.write_pairs_for_comparisons`), and q = the label's probability that the
  HUMAN-CHOSEN answer is better; then accuracy and calibration as above.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from cai_jax import parallel
from cai_jax.constitution.conversation_format import make_format
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import DataError
from cai_jax.data.sources import Comparison
from cai_jax.eval import calibration
from cai_jax.model.heads import LoadedPM
from cai_jax.train import engine, pm


def _sigmoid(x):
  x = np.asarray(x, np.float64)
  return np.exp(-np.logaddexp(0.0, -x))


class PMScorer:
  """Rewards of pairs under a loaded preference model."""

  def __init__(self, loaded: LoadedPM, mesh, *, batch_size: int = 8, max_length: int = 0,
               min_length: int = 32, append_eos: bool | None = None):
    self.loaded = loaded
    self.mesh = mesh
    self.batch_size = int(batch_size)
    parallel.check_batch(self.batch_size, mesh, "eval.batch_size")
    self.max_length = int(max_length or loaded.settings.get("max_length", 512))
    self.min_length = int(min_length)
    self.append_eos = bool(loaded.settings.get("append_eos", True) if append_eos is None
                           else append_eos)
    # Sequences in the conversation format the PM was trained on (PMs saved before formats
    # existed were trained on the paper's layout).
    self.fmt = make_format(loaded.settings.get("conversation_format", "hh"), loaded.tokenizer)
    self._fn = engine.compile_eval_step(pm.make_reward_fn(loaded.config),
                                        jax.tree.map(lambda x: x.sharding, loaded.params), mesh)

  def score(self, pairs: Sequence[prefs.Preference], progress=None) -> tuple[np.ndarray, int]:
    """([N, 2] float64 rewards of (responses[0], responses[1]), number of truncated pairs)."""
    examples = prefs.tokenize(pairs, self.loaded.tokenizer, max_length=self.max_length,
                              append_eos=self.append_eos, fmt=self.fmt)
    out = np.zeros((len(examples), 2), np.float64)
    rows = parallel.process_rows(self.batch_size)
    for idx, local in prefs.eval_batches(examples, self.batch_size, max_length=self.max_length,
                                         min_length=self.min_length, rows=rows,
                                         pad_id=self.loaded.tokenizer.pad_id):
      r = np.asarray(jax.device_get(self._fn(self.loaded.params,
                                             parallel.global_batch(local, self.mesh))))
      out[idx] = r[:len(idx)]
      if progress is not None:
        progress.update(len(idx))
    return out, sum(e.truncated for e in examples)

  def score_responses(self, items: Sequence[tuple[str, str]], progress=None
                      ) -> tuple[np.ndarray, int]:
    """([N] float64 rewards of single (prompt, response) transcripts, number of truncated
    rows). Answers to the same prompt share a PM row (the row holds two sequences); an odd one
    out is paired with itself."""
    by_prompt: dict[str, list[int]] = {}
    for k, (prompt, _) in enumerate(items):
      by_prompt.setdefault(prompt, []).append(k)
    pairs, slots = [], []
    for prompt, idx in by_prompt.items():
      for s in range(0, len(idx), 2):
        a = idx[s]
        b = idx[s + 1] if s + 1 < len(idx) else a
        pairs.append(prefs.Preference(f"r{len(pairs)}", prompt, (items[a][1], items[b][1]), 0.5))
        slots.append((a, b))
    rewards, truncated = self.score(pairs, progress=progress)
    out = np.zeros(len(items), np.float64)
    for (a, b), r in zip(slots, rewards):
      out[a], out[b] = r[0], r[1]
    return out, truncated


def pair_report(r_better: np.ndarray, r_worse: np.ndarray, num_bins: int = 10) -> dict:
  gap = np.asarray(r_better, np.float64) - np.asarray(r_worse, np.float64)
  q = _sigmoid(gap)
  acc, ties = calibration.accuracy(q)
  rel = calibration.pair_calibration(q, num_bins)
  return {"n": int(gap.size), "accuracy": acc, "ties": ties,
          "mean_loss": float(np.mean(np.logaddexp(0.0, -gap))) if gap.size else None,
          "mean_p_better": float(np.mean(q)) if gap.size else None,
          "ece": rel["ece"], "calibration": rel}


@dataclasses.dataclass
class Agreement:
  q: np.ndarray                 # per matched label: P(human-chosen answer better)
  matched_ids: list[str]        # label ids, in label-file order
  unmatched_labels: list[str]   # label ids with no comparison of the same prompt and responses
  unlabelled_pairs: int         # comparisons no label matched


def match_labels(labels, comparisons: Sequence[Comparison]) -> Agreement:
  """Matches labels (FeedbackLabel) to comparisons by (prompt, {two responses}); an id match is
  preferred when several comparisons share the same content."""
  by_content: dict[tuple, list[Comparison]] = {}
  for c in comparisons:
    by_content.setdefault((c.prompt, frozenset((c.chosen, c.rejected))), []).append(c)
  q, matched, unmatched, used = [], [], [], set()
  for lab in labels:
    a, b = lab.responses
    found = by_content.get((lab.prompt, frozenset((a, b))))
    if not found or a == b:
      unmatched.append(lab.id)
      continue
    comp = next((c for c in found if c.id == lab.id), found[0])
    used.add(comp.id)
    q.append(lab.p_first_better if a == comp.chosen else 1.0 - lab.p_first_better)
    matched.append(lab.id)
  return Agreement(np.asarray(q, np.float64), matched, unmatched,
                   sum(1 for c in comparisons if c.id not in used))


def labeller_agreement(labels, comparisons: Sequence[Comparison], num_bins: int = 10,
                       where: str = "") -> dict:
  """Accuracy and calibration of the AI labels against the human choices (see module doc)."""
  m = match_labels(labels, comparisons)
  if not m.matched_ids:
    raise DataError(f"{where}: no feedback label matches a comparison of the human file (same "
                    "prompt and the same two responses); were the labels made on its pairs?")
  acc, ties = calibration.accuracy(m.q)
  rel = calibration.pair_calibration(m.q, num_bins)
  return {"matched": len(m.matched_ids), "unmatched_labels": len(m.unmatched_labels),
          "unmatched_label_ids": m.unmatched_labels[:20], "unlabelled_pairs": m.unlabelled_pairs,
          "accuracy": acc, "ties": ties, "mean_p_chosen": float(np.mean(m.q)),
          "ece": rel["ece"], "calibration": rel}
