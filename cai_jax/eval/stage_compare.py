"""Compare checkpoints (the paper's stages: base -> SL-CAI -> RL-CAI) on held-out prompts.

Three steps, each resumable (records are appended batch by batch and a rerun skips the ids
already written):
1. answers: every stage answers every held-out prompt of both sets (red-team prompts: the
   harmlessness set; ordinary requests: the helpfulness set) with the same sampler settings
   (`answer_records`, one jsonl per stage);
2. judgements: for every pair of stages and every prompt, the AI judge (a feedback model asked
   the multiple-choice question in both orders, averaged over an ensemble of principles, see
   `cai_jax.cai.feedback`) gives P(answer of a is better) under the set's constitution: the
   harmlessness constitution for red-team prompts, the helpfulness one for ordinary requests
   (`judgement_pairs`, `judgement_record`). Identical answers are a tie (0.5) without asking;
3. preference-model scores of every answer (`pm_items`).
`summarize` turns them into Elo scores and win rates with bootstrap intervals
(`cai_jax.eval.elo`), PM score statistics per stage and set, answer lengths, and the
calibration of the PM against the judge on these held-out pairs.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Sequence

import numpy as np

from cai_jax.cai import feedback as F
from cai_jax.config_defaults import ConfigError
from cai_jax.data import sources
from cai_jax.eval import analysis, calibration, elo

SETS = ("harmless", "helpful")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  checkpoint: str


def parse_stages(spec: str) -> list[Stage]:
  """'base=gemma3-270m,sl=RUN/sl_train/export_hf,...' -> stages in that order (the first is
  the Elo reference)."""
  out, seen = [], set()
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    name, sep, ckpt = part.partition("=")
    name, ckpt = name.strip(), ckpt.strip()
    if not sep or not name or not ckpt:
      raise ConfigError(f"eval.stages: {part!r} is not NAME=CHECKPOINT")
    if not _NAME.match(name):
      raise ConfigError(f"eval.stages: stage name {name!r} may hold only letters, digits, "
                        "'_', '-' and '.'")
    if name in seen:
      raise ConfigError(f"eval.stages: stage {name!r} is given twice")
    seen.add(name)
    out.append(Stage(name, ckpt))
  if len(out) < 2:
    raise ConfigError(f"eval.stages needs at least two NAME=CHECKPOINT entries, got {spec!r}")
  return out


def interleave_categories(records: Sequence[sources.PromptRecord]
                          ) -> list[sources.PromptRecord]:
  """Round-robin over categories (in order of first appearance), so that the first n prompts
  cover as many categories as possible."""
  by_cat: dict = {}
  for r in records:
    by_cat.setdefault(r.category, []).append(r)
  out = []
  for row in itertools.zip_longest(*by_cat.values()):
    out += [r for r in row if r is not None]
  return out


def eval_prompts(spec: str, limit: int) -> list[sources.PromptRecord]:
  records = interleave_categories(sources.load_prompt_set(spec))
  return records[:limit] if limit else records


def answer_id(set_name: str, prompt_id: str) -> str:
  return f"{set_name}:{prompt_id}"


# ---------------------------------------------------------------------------------------------
# Judgements


def _option_text(text: str) -> str:
  """An answer as it can go between the option brackets: the delimiters defused."""
  for d in F.DELIMITERS:
    text = text.replace(d, " ".join(d))
  return text


def judgement_id(set_name: str, a: str, b: str, prompt_id: str) -> str:
  return f"{set_name}:{a}|{b}:{prompt_id}"


def judgement_pairs(set_name: str, stages: Sequence[str], prompts, answers: dict[str, dict]
                    ) -> tuple[list[F.Pair], list[dict]]:
  """(pairs to ask the judge, ties decided without asking) for every pair of stages (in the
  given order: a before b) and prompt. `answers[stage][answer_id]` is the answer text."""
  ask, ties = [], []
  for a, b in itertools.combinations(stages, 2):
    for r in prompts:
      key = answer_id(set_name, r.id)
      ans_a, ans_b = answers[a][key], answers[b][key]
      jid = judgement_id(set_name, a, b, r.id)
      if ans_a.strip() == ans_b.strip():
        ties.append({"id": jid, "set": set_name, "a": a, "b": b, "prompt_id": r.id,
                     "p_a_better": 0.5, "tie": "identical answers", "per_principle": []})
      else:
        ask.append(F.Pair(jid, r.prompt, (_option_text(ans_a), _option_text(ans_b))))
  return ask, ties


def judgement_record(set_name: str, label: dict) -> dict:
  """A judge record from a labeller record whose id is a judgement_id."""
  _, pair, prompt_id = label["id"].split(":", 2)
  a, b = pair.split("|")
  return {"id": label["id"], "set": set_name, "a": a, "b": b, "prompt_id": prompt_id,
          "p_a_better": float(label["p_first_better"]), "per_principle": label["per_principle"]}


# ---------------------------------------------------------------------------------------------
# Summary


def _stats(x: Sequence[float]) -> dict:
  """analysis.mean_se (n, mean, std, se) plus median, min and max."""
  x = np.asarray(x, np.float64).ravel()
  out = analysis.mean_se(x)
  if x.size:
    out.update(median=float(np.median(x)), min=float(x.min()), max=float(x.max()))
  return out


def length_stats(records: Sequence[dict]) -> dict:
  reasons: dict[str, int] = {}
  for r in records:
    reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
  return {"tokens": _stats([r["num_tokens"] for r in records]),
          "words": _stats([len(r["completion"].split()) for r in records]),
          "finish_reasons": reasons}


def summarize(stages: Sequence[str], answers: dict[str, list[dict]], judgements: list[dict],
              pm_scores: dict[str, dict[str, float]] | None, *, num_bootstrap: int,
              confidence: float, seed: int, num_bins: int) -> dict:
  """answers[stage] = answer records; judgements = judge records; pm_scores[stage][answer_id]
  = reward (None: no PM)."""
  index = {s: k for k, s in enumerate(stages)}
  out: dict = {"elo": {}, "win_rates": {}, "lengths": {}, "pm_score": {}}
  for set_name in SETS:
    js = [j for j in judgements if j["set"] == set_name]
    if js:
      i = [index[j["a"]] for j in js]
      k = [index[j["b"]] for j in js]
      s = [j["p_a_better"] for j in js]
      g = [j["prompt_id"] for j in js]
      out["elo"][set_name] = elo.elo_table(list(stages), i, k, s, g,
                                           num_bootstrap=num_bootstrap, confidence=confidence,
                                           seed=seed)
      out["win_rates"][set_name] = elo.win_rates(list(stages), i, k, s, g,
                                                 num_bootstrap=num_bootstrap,
                                                 confidence=confidence, seed=seed)
    out["lengths"][set_name] = {st: length_stats([r for r in answers[st]
                                                  if r["set"] == set_name]) for st in stages}
    if pm_scores is not None:
      out["pm_score"][set_name] = {
          st: _stats([pm_scores[st][r["id"]] for r in answers[st]
                      if r["set"] == set_name and r["id"] in pm_scores[st]])
          for st in stages}
  if pm_scores is not None and judgements:
    pred, judge = [], []
    for j in judgements:
      key = answer_id(j["set"], j["prompt_id"])
      gap = pm_scores[j["a"]].get(key, np.nan) - pm_scores[j["b"]].get(key, np.nan)
      if np.isfinite(gap) and "tie" not in j:
        pred.append(float(1.0 / (1.0 + np.exp(-gap))))
        judge.append(j["p_a_better"])
    if pred:
      p, q = np.asarray(pred), np.asarray(judge)
      decided = q != 0.5
      # each pair from both sides, so the diagram is symmetric and no side is privileged
      pts_p, pts_q = np.concatenate([p, 1 - p]), np.concatenate([q, 1 - q])
      rel = calibration.reliability(pts_p, pts_q, num_bins)
      out["pm_vs_judge"] = {
          "n": int(len(p)),
          # how often the PM favours the side the judge favours (pairs the judge called even
          # are left out)
          "agreement": float(np.mean((p[decided] > 0.5) == (q[decided] > 0.5)))
          if decided.any() else float("nan"),
          "ece": rel["ece"],
          "calibration": rel}
  return out
