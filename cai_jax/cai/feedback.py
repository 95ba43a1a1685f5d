"""AI feedback (RLAIF): soft preference labels for answer pairs from a feedback model.

For a pair (prompt, first, second) the feedback model is asked the paper's multiple-choice
question (`prompts.mc_context`: the constitution's labelled examples, then the question) under
K principles drawn for the pair, and its answer is read as the normalised probability of the
continuation " (A)" against " (B)" from their summed log-probabilities (`MCScorer`):

    p_A = exp(s_A) / (exp(s_A) + exp(s_B))                       normalised_choice_prob

- Position debiasing (`both_orders=True`, the default): each principle is asked twice, with
  (A) = first, (B) = second and swapped, and p(first better) = (p_A_orig + 1 - p_A_swapped) / 2
  (`both_orders`). With `both_orders=False` only the first order is asked and
  p(first better) = p_A_orig.
- Ensemble: the label is the mean of the K per-principle probabilities (`ensemble_average`).
  The K principles are drawn without replacement, from (seed, pair id) alone, so batching and
  restarts do not change them (`draw_mc_principles`).
- Hard labels (`label="hard"`, the paper's soft-vs-hard ablation): the ensemble probability is
  rounded to 1 / 0 (0.5 stays 0.5) and kept as `p_soft` beside it.
- Few-shot examples (`few_shot_principles`): by default every labelled example is shown under
  the question's principle (one prefix per principle, prefilled once); `independent` shows each
  example under its own principle drawn from (seed, pair id, principle id)
  (`draw_example_principles`), as the paper did, at the cost of that shared prefix.
- Position bias is always measured: the mean of P(choose (A)) over every question asked, minus
  0.5 (`position_bias`). With both orders each pair is shown both ways round, so content cancels
  and the number measures the preference for the letter (A) alone; with one order it is
  confounded with which answer was better (reported with `position_bias_orders: 1`).
- Chain of thought (`mode="cot"`): the model first writes its reasoning after
  `prompts.cot_context` (sampled through the Sampler, stopped at `prompts.COT_STOPS`, with each
  principle's few-shot prefix prefilled once and reused), then the answer probability is read
  after `prompts.cot_answer_context(context, reasoning)` on the same options. Each CoT
  probability P(A) is clamped to [clamp_low, clamp_high] (default [0.4, 0.6], as the paper found
  better calibrated; 0 and 1 disable it) BEFORE the both-orders average and the ensemble. The
  records keep the raw (unclamped) P(A) values, which also feed the position bias.

Option tokenisation: the scorer encodes the context and each option separately and appends them,
so an option must tokenise as a clean continuation of its context:
encode(context + option) == encode(context) + encode(option) for " (A)" and " (B)". When a
tokenizer is given, every question is checked before it is scored and a violation raises
`OptionTokenisationError` naming the pair (file:line), the principle and the order. (The default
checkpoint's tokenizer passes for our constitutions and the paper's: the contexts end with "is:".)

Responses go between the option brackets stripped of surrounding whitespace (as in the paper's
examples); the records keep them as they were in the pairs file.

Pairs and labels files:
- pairs (written by the `sample_pairs` job): jsonl `{"id", "prompt", "responses": [a, b],
  "flags"?, ...}`. A line whose `flags` is non-empty is skipped and counted with its flags
  (sample_pairs flags empty answers, identical answers and answers holding the option delimiters
  "[[[" / "]]]"). An unflagged line must hold two non-empty, different, delimiter-free responses,
  else `DataError` file:line (`read_pairs_file`).
- labels: jsonl, one record per labelled pair, `{"id", "prompt", "responses", "p_first_better",
  "per_principle": [{"principle_id", "p_first_better", "p_a_orig", "p_a_swapped", ("reasoning":
  [orig, swapped])}], "mode", "provenance"}`; `p_a_swapped` is null with one order. Every
  probability is checked to be in [0, 1] when written and when read (`read_feedback_file`,
  `DataError` file:line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import numpy as np

from cai_jax.constitution import prompts as P
from cai_jax.constitution.conversation_format import HHFormat, split_prefix
from cai_jax.data.jsonl import DataError, append_jsonl, read_jsonl, require
from cai_jax.eval.mc import MCItem

MODES = ("mc", "cot")
LABELS = ("soft", "hard")
FEW_SHOT_PRINCIPLES = ("same", "independent")
ORDERS = ("orig", "swapped")
DELIMITERS = ("[[[", "]]]")


class OptionTokenisationError(DataError):
  """An option that does not tokenise as a clean continuation of its question."""


# ----------------------------------------------------------------------------------------------
# The soft-label math: small pure functions on floats or NumPy arrays (float64).


def _out(x: np.ndarray):
  return float(x) if np.ndim(x) == 0 else x


def normalised_choice_prob(score_a, score_b):
  """P(A) = exp(s_A) / (exp(s_A) + exp(s_B)) from summed log-probabilities, computed stably as
  exp(-log(1 + exp(s_B - s_A))): exact for scores of any size (-1000 vs -1001 gives
  1 / (1 + e^-1)), 1.0 / 0.0 when one option has score -inf. Raises ValueError for NaN scores or
  two infinite scores of the same sign (no preference can be read)."""
  a = np.asarray(score_a, np.float64)
  b = np.asarray(score_b, np.float64)
  with np.errstate(invalid="ignore"):
    d = b - a
  if np.any(np.isnan(d)):
    raise ValueError(f"cannot normalise scores {score_a!r} and {score_b!r}: NaN, or both "
                     "infinite with the same sign")
  return _out(np.exp(-np.logaddexp(0.0, d)))


def _check_probs(p, what: str) -> np.ndarray:
  p = np.asarray(p, np.float64)
  if not np.all(np.isfinite(p)) or np.any(p < 0.0) or np.any(p > 1.0):
    raise ValueError(f"{what} must be probabilities in [0, 1], got {p.tolist()!r}")
  return p


def ensemble_average(probs) -> float:
  """The ensemble label: the mean of the per-principle probabilities (a non-empty list)."""
  p = _check_probs(probs, "ensemble members")
  if p.size == 0:
    raise ValueError("ensemble_average of no probabilities")
  return float(np.mean(p))


def both_orders(p_a_orig, p_a_swapped):
  """p(first better) from the two orders: (A) = first gives p_a_orig, (A) = second gives
  p_a_swapped, so p(first) = (p_a_orig + (1 - p_a_swapped)) / 2."""
  a = _check_probs(p_a_orig, "p_a_orig")
  b = _check_probs(p_a_swapped, "p_a_swapped")
  return _out((a + (1.0 - b)) / 2.0)


def clamp(p, lo: float, hi: float):
  """p clipped to [lo, hi] (0 <= lo <= hi <= 1; lo=0, hi=1 leaves p unchanged)."""
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"clamp bounds must satisfy 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
  return _out(np.clip(_check_probs(p, "clamped values"), lo, hi))


def principle_probability(p_a_orig, p_a_swapped=None, lo: float = 0.0, hi: float = 1.0
                          ) -> float:
  """One principle's p(first better) from the raw P(A) of its question(s): each clamped to
  [lo, hi] ((0, 1): unclamped), then the both-orders average where the swapped order was
  asked."""
  a = clamp(p_a_orig, lo, hi)
  return a if p_a_swapped is None else both_orders(a, clamp(p_a_swapped, lo, hi))


def position_bias(p_a_orig, p_a_swapped=None) -> float:
  """Mean P(choose (A)) over every question asked, minus 0.5.

  With both orders (`p_a_swapped` given, same length as `p_a_orig`) each pair is seen both ways
  round, so a feedback model without a letter preference scores 0 whatever it thinks of the
  content; a model that always answers (A) scores 0.5, always (B) -0.5. With one order only,
  the number is also moved by which answer happened to be first and better."""
  values = [_check_probs(p_a_orig, "p_a_orig").ravel()]
  if p_a_swapped is not None:
    swapped = _check_probs(p_a_swapped, "p_a_swapped").ravel()
    if swapped.size != values[0].size:
      raise ValueError(f"p_a_orig and p_a_swapped differ in length ({values[0].size} vs "
                       f"{swapped.size})")
    values.append(swapped)
  allp = np.concatenate(values)
  if allp.size == 0:
    raise ValueError("position_bias of no probabilities")
  return float(np.mean(allp) - 0.5)


# ----------------------------------------------------------------------------------------------
# Pairs, principles, questions.


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two answers to one prompt; `where` ("file:line") names it in errors."""
  id: str
  prompt: str  # "\n\nHuman: ...\n\nAssistant:"
  responses: tuple[str, str]  # as sampled (leading space kept)
  where: str = ""
  axis: str = ""  # what the pair is judged for ('harmless', 'helpful', ...); '' = untagged


def pair_flags(first: str, second: str) -> list[str]:
  """Why a pair cannot be labelled (empty list: it can): `empty:first` / `empty:second` (blank
  after strip), `delimiter:first` / `delimiter:second` (holds "[[[" or "]]]", which delimit the
  options of the question), `identical` (equal after strip)."""
  flags = []
  for name, text in (("first", first), ("second", second)):
    if not text.strip():
      flags.append(f"empty:{name}")
    elif any(d in text for d in DELIMITERS):
      flags.append(f"delimiter:{name}")
  if first.strip() and first.strip() == second.strip():
    flags.append("identical")
  return flags


def draw_mc_principles(constitution, pair_id: str, k: int, seed: int) -> list:
  """`k` distinct multiple-choice principles for one pair, from (seed, pair id) alone."""
  n = len(constitution.mc_principles)
  if not 1 <= k <= n:
    raise ValueError(f"num_principles must be between 1 and the constitution's {n} "
                     f"multiple-choice principles, got {k}")
  digest = hashlib.sha256(f"feedback:{seed}:{pair_id}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  return [constitution.mc_principles[i] for i in rng.choice(n, size=k, replace=False)]


def draw_example_principles(constitution, pair_id: str, principle_id: str, n: int,
                            seed: int) -> list:
  """One principle per few-shot example for the question (pair, principle), each drawn
  independently (with replacement) from (seed, pair id, principle id) alone: the paper's
  procedure, where the examples do not all repeat the question's principle."""
  digest = hashlib.sha256(f"feedback-examples:{seed}:{pair_id}:{principle_id}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  m = len(constitution.mc_principles)
  return [constitution.mc_principles[i] for i in rng.integers(0, m, size=n)]


def hard_label(p: float) -> float:
  """The hard version of a soft label: 1 above 0.5, 0 below, 0.5 (no preference) at 0.5."""
  return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def mc_item(constitution, prompt: str, principle, response_a: str, response_b: str,
            example_principles=None) -> MCItem:
  """The multiple-choice question (with the few-shot prefix) for (A) = response_a, as an MCItem
  on MC_OPTIONS; responses are stripped before they go between the brackets."""
  context = P.mc_context(constitution, P.mc_conversation(prompt), principle,
                         response_a.strip(), response_b.strip(), example_principles)
  return MCItem(context, P.MC_OPTIONS, (True, False))


def cot_question_context(constitution, prompt: str, principle, response_a: str,
                         response_b: str, example_principles=None) -> str:
  """The chain-of-thought context the model continues with its reasoning."""
  return P.cot_context(constitution, P.mc_conversation(prompt), principle, response_a.strip(),
                       response_b.strip(), example_principles)


def check_option_tokenisation(tokenizer, contexts: Sequence[str], names: Sequence[str],
                              options: Sequence[str] = P.MC_OPTIONS) -> None:
  """Raises OptionTokenisationError unless encode(context + option) == encode(context) +
  encode(option) for every context and option (what the scorer's separate encoding assumes)."""
  option_ids = tokenizer.encode_batch(list(options), add_bos=False)
  texts = [t for ctx in contexts for t in (ctx, *(ctx + o for o in options))]
  encoded = tokenizer.encode_batch(texts, add_bos=False)
  step = 1 + len(options)
  for i, name in enumerate(names):
    base = encoded[i * step]
    for j, (opt, ids) in enumerate(zip(options, option_ids)):
      joint = encoded[i * step + 1 + j]
      if joint != base + ids:
        tail = len(ids) + 3
        raise OptionTokenisationError(
            f"{name}: option {opt!r} does not tokenise as a clean continuation of the question "
            f"(encode(context + option) ends {joint[-tail:]}, encode(context) + encode(option) "
            f"ends {(base + ids)[-tail:]}); the scorer's summed log-probabilities would not be "
            "those of the text. Change the layout's last words or the tokenizer.")


# ----------------------------------------------------------------------------------------------
# The labeller.


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
  mode: str = "mc"              # "mc" or "cot"
  num_principles: int = 4       # K principles per pair (without replacement)
  both_orders: bool = True      # ask with (A)/(B) swapped too and average
  clamp_low: float = 0.4        # CoT only: P(A) clamped to [clamp_low, clamp_high]
  clamp_high: float = 0.6
  max_reasoning_tokens: int = 128  # CoT only
  seed: int = 0
  label: str = "soft"           # "soft": the ensemble probability; "hard": rounded to 0 / 1
  few_shot_principles: str = "same"  # "same": examples under the question's principle;
                                     # "independent": each under its own drawn principle

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.label not in LABELS:
      raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
    if self.few_shot_principles not in FEW_SHOT_PRINCIPLES:
      raise ValueError(f"few_shot_principles must be one of {FEW_SHOT_PRINCIPLES}, got "
                       f"{self.few_shot_principles!r}")
    if self.num_principles < 1:
      raise ValueError(f"num_principles must be >= 1, got {self.num_principles}")
    if not 0.0 <= self.clamp_low <= self.clamp_high <= 1.0:
      raise ValueError("clamp bounds must satisfy 0 <= clamp_low <= clamp_high <= 1, got "
                       f"{self.clamp_low}, {self.clamp_high}")
    if self.max_reasoning_tokens < 1:
      raise ValueError(f"max_reasoning_tokens must be >= 1, got {self.max_reasoning_tokens}")


@dataclasses.dataclass
class _Question:
  pair: int
  principle: Any
  order: str    # "orig": (A) = first; "swapped": (A) = second
  context: str  # the text scored on MC_OPTIONS
  index: int = 0  # its place among its pair's questions: which fold of the pair's key it samples
  reasoning: str | None = None
  examples: list | None = None  # one principle per few-shot example ('independent'), else None


class FeedbackLabeller:
  """Labels batches of pairs with one scorer (an MCScorer, or anything whose
  `score(items).scores` gives per-item option scores) and, in CoT mode, one sampler."""

  def __init__(self, constitution, scorer, settings: FeedbackSettings, *, tokenizer=None,
               sampler=None, strategy=None, fmt=None):
    if settings.num_principles > len(constitution.mc_principles):
      raise ValueError(f"num_principles={settings.num_principles} but constitution "
                       f"{constitution.name!r} has {len(constitution.mc_principles)} "
                       "multiple-choice principles")
    if settings.mode == "cot" and sampler is None:
      raise ValueError("mode 'cot' needs a sampler for the reasoning")
    self.c = constitution
    self.scorer = scorer
    self.settings = settings
    self.tokenizer = tokenizer
    self.sampler = sampler
    # Questions are built in the paper's layout; `fmt` turns them into the model's text.
    self.fmt = fmt or HHFormat(tokenizer)
    if strategy is None:
      from cai_jax.sampling.strategies import Greedy
      strategy = Greedy()
    self.strategy = strategy
    self._cot_prefixes: dict[str, tuple[str, Any]] = {}  # principle id -> (text, PrefixCache)
    self._score_prefixes: dict[str, Any] = {}  # principle id -> the scorer's ScoringPrefix
    self.questions_scored = 0
    self.tokens_generated = 0
    self.num_truncated = 0      # scorer contexts that lost tokens on the left
    self.cot_truncated = 0      # CoT rows the sampler cut on the left

  # -------------------------------------------------------------- questions

  def _orders(self, first: str, second: str):
    out = [("orig", first, second)]
    if self.settings.both_orders:
      out.append(("swapped", second, first))
    return out

  def questions(self, pairs: Sequence[Pair]) -> list[_Question]:
    """Every question for the pairs, in pair, principle, order order (contexts for MC; for CoT
    the contexts the reasoning continues)."""
    out = []
    for i, pair in enumerate(pairs):
      first, second = pair.responses
      n = 0
      for principle in draw_mc_principles(self.c, pair.id, self.settings.num_principles,
                                          self.settings.seed):
        examples = None
        if self.settings.few_shot_principles == "independent":
          count = len(self.c.mc_few_shot if self.settings.mode == "mc" else self.c.cot_few_shot)
          examples = draw_example_principles(self.c, pair.id, principle.id, count,
                                             self.settings.seed)
        for order, a, b in self._orders(first, second):
          if self.settings.mode == "mc":
            ctx = mc_item(self.c, pair.prompt, principle, a, b, examples).prompt
          else:
            ctx = cot_question_context(self.c, pair.prompt, principle, a, b, examples)
          out.append(_Question(i, principle, order, ctx, index=n, examples=examples))
          n += 1
    return out

  def _cot_prefix(self, principle):
    if principle.id not in self._cot_prefixes:
      text = P.cot_few_shot_prefix(self.c, principle)
      model_text = self.fmt.prefix(text)
      self._cot_prefixes[principle.id] = (text, self.sampler.prefill_prefix(model_text)
                                          if model_text else None)
    return self._cot_prefixes[principle.id]

  def _reason(self, questions: list[_Question], pair_keys) -> None:
    """Samples the reasoning of every CoT question (grouped by principle, whose few-shot prefix
    is prefilled once) and turns each context into its answer context. Question k of pair i
    samples with fold_in(pair_keys[i], k): a pair's reasoning does not depend on its batch."""
    import jax
    import numpy as np
    by_principle: dict[str, list[_Question]] = {}
    for q in questions:  # examples drawn per question share no prefix: one group, none cached
      by_principle.setdefault(q.principle.id if q.examples is None else "", []).append(q)
    for pid in sorted(by_principle):
      group = by_principle[pid]
      text, prefix = self._cot_prefix(group[0].principle) if pid else ("", None)
      rows = [split_prefix(self.fmt, text, q.context)[1] for q in group]
      keys = np.stack([np.asarray(jax.random.fold_in(pair_keys[q.pair], q.index))
                       for q in group])
      out = self.sampler.generate(rows, max_new_tokens=self.settings.max_reasoning_tokens,
                                  strategy=self.strategy, keys=keys, stop=P.COT_STOPS,
                                  prefix=prefix)
      self.tokens_generated += int(sum(out.num_tokens))
      self.cot_truncated += int(sum(bool(t) for t in out.truncated))
      for q, reasoning in zip(group, out.texts):
        q.reasoning = reasoning
        q.context = P.cot_answer_context(q.context, reasoning)

  # -------------------------------------------------------------- labels

  def _few_shot_prefix(self, principle) -> str:
    if self.settings.mode == "cot":
      return self.fmt.prefix(P.cot_few_shot_prefix(self.c, principle))
    return self.fmt.prefix(P.mc_few_shot_prefix(self.c, principle))

  def _score(self, questions, items) -> list[list[float]]:
    """Option scores. A scorer with `prefill`/`score_after` (MCScorer) computes each
    principle's few-shot prefix once and scores only the questions after it, when prefix and
    question fit the scorer's max_length whole (otherwise the full contexts, left-truncated, so
    the cache never changes a score); any other scorer gets the full contexts."""
    if not hasattr(self.scorer, "score_after"):
      result = self.scorer.score(items)
      self.num_truncated += int(getattr(result, "num_truncated", 0))
      return result.scores
    scores: list = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
      groups.setdefault(q.principle.id if q.examples is None else "", []).append(i)
    for key, idx in groups.items():
      principle = questions[idx[0]].principle
      text = self._few_shot_prefix(principle) if key else ""  # per-question examples: no cache
      group = [items[i] for i in idx]
      if text and all(it.prompt.startswith(text) and len(it.prompt) > len(text) for it in group):
        if principle.id not in self._score_prefixes:
          self._score_prefixes[principle.id] = self.scorer.prefill(text)
        prefix = self._score_prefixes[principle.id]
        rests = self.scorer.tokenizer.encode_batch([it.prompt[len(text):] for it in group],
                                                   add_bos=False)
        options = sum(len(o) for o in self.scorer.tokenizer.encode_batch(list(P.MC_OPTIONS),
                                                                         add_bos=False))
        if prefix.length + max(len(r) for r in rests) + options <= self.scorer.max_length:
          result = self.scorer.score_after(group, prefix)
        else:  # something must be cut: full contexts, left-truncated as without the cache
          result = self.scorer.score(group)
      else:
        result = self.scorer.score(group)
      self.num_truncated += int(getattr(result, "num_truncated", 0))
      for i, sc in zip(idx, result.scores):
        scores[i] = sc
    return scores

  def label(self, pairs: Sequence[Pair], keys=None) -> list[dict]:
    """One record body per pair (without provenance): see the module docstring. `keys` (CoT):
    one PRNG key per pair, by default `record_keys(seed, pair ids)`."""
    if not pairs:
      return []
    s = self.settings
    questions = self.questions(pairs)
    if s.mode == "cot":
      from cai_jax.sampling.record_keys import record_keys
      if keys is None:
        keys = record_keys(s.seed, [p.id for p in pairs])
      if len(keys) != len(pairs):
        raise ValueError(f"{len(keys)} keys for {len(pairs)} pairs")
      self._reason(questions, keys)
    contexts = [self.fmt.context(q.context) for q in questions]
    if self.tokenizer is not None:
      names = [f"{pairs[q.pair].where or 'pair'} (id {pairs[q.pair].id!r}), principle "
               f"{q.principle.id!r}, order {q.order}" for q in questions]
      check_option_tokenisation(self.tokenizer, contexts, names)
    items = [MCItem(ctx, P.MC_OPTIONS, (True, False)) for ctx in contexts]
    scores = self._score(questions, items)
    self.questions_scored += len(items)
    p_a = [normalised_choice_prob(sc[0], sc[1]) for sc in scores]

    per_pair: list[dict[str, dict]] = [dict() for _ in pairs]  # principle id -> entry
    for q, p in zip(questions, p_a):
      entry = per_pair[q.pair].setdefault(q.principle.id, {
          "principle_id": q.principle.id, "p_first_better": None, "p_a_orig": None,
          "p_a_swapped": None})
      entry[f"p_a_{q.order}"] = p
      if s.mode == "cot":
        entry.setdefault("reasoning", []).append(q.reasoning)
    if s.few_shot_principles == "independent":
      for q in questions:
        per_pair[q.pair][q.principle.id]["example_principle_ids"] = [x.id for x in q.examples]
    records = []
    for pair, entries in zip(pairs, per_pair):
      for e in entries.values():
        e["p_first_better"] = self.principle_label(e["p_a_orig"], e["p_a_swapped"])
      per_principle = list(entries.values())
      soft = ensemble_average([e["p_first_better"] for e in per_principle])
      record = {"id": pair.id, "prompt": pair.prompt, "responses": list(pair.responses),
                "p_first_better": soft if s.label == "soft" else hard_label(soft),
                "per_principle": per_principle, "mode": s.mode}
      if s.label == "hard":
        record["p_soft"] = soft
      records.append(record)
    return records

  def principle_label(self, p_a_orig: float, p_a_swapped: float | None) -> float:
    """One principle's p(first better): CoT probabilities clamped first, then both orders."""
    s = self.settings
    lo, hi = (s.clamp_low, s.clamp_high) if s.mode == "cot" else (0.0, 1.0)
    return principle_probability(p_a_orig, p_a_swapped, lo, hi)


# ----------------------------------------------------------------------------------------------
# Files: pairs in, labels out and back in.


def read_pairs_file(path: str) -> tuple[list[Pair], list[dict]]:
  """(pairs to label, skipped) from a pairs jsonl. `skipped` lists the flagged lines as
  {"id", "line", "flags"}; an unflagged line that cannot be labelled is a DataError."""
  pairs, skipped, first_line = [], [], {}
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    rid = require(obj, "id", (str, int), path, lineno)
    rid = str(rid)
    if not rid.strip():
      raise DataError(f"{where}: empty 'id'")
    if rid in first_line:
      raise DataError(f"{where}: duplicate id {rid!r} (first on line {first_line[rid]})")
    first_line[rid] = lineno
    prompt = require(obj, "prompt", str, path, lineno)
    try:
      P.mc_conversation(prompt)
    except ValueError as e:
      raise DataError(f"{where}: field 'prompt': {e}") from None
    responses = require(obj, "responses", list, path, lineno)
    if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
      raise DataError(f"{where}: field 'responses' should be a list of two strings")
    axis = obj.get("axis", "")
    if not isinstance(axis, str):
      raise DataError(f"{where}: field 'axis' should be a string, got {type(axis).__name__}")
    flags = obj.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
      raise DataError(f"{where}: field 'flags' should be a list of strings")
    if flags:
      skipped.append({"id": rid, "line": lineno, "flags": list(flags)})
      continue
    problems = pair_flags(*responses)
    if problems:
      raise DataError(f"{where}: pair {rid!r} cannot be labelled ({', '.join(problems)}): it "
                      "needs two non-empty, different responses without '[[[' or ']]]' "
                      "(sample_pairs writes such pairs with a 'flags' field, which makes the "
                      "feedback job skip and count them)")
    pairs.append(Pair(rid, prompt, (responses[0], responses[1]), where, axis))
  if not pairs and not skipped:
    raise DataError(f"{path}: no pairs in the file")
  return pairs, skipped


def _probability(value, what: str, where: str, *, optional: bool = False) -> float | None:
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
      or not 0.0 <= value <= 1.0:
    raise DataError(f"{where}: {what} must be a probability in [0, 1], got {value!r}")
  return float(value)


def validate_record(rec: dict, where: str) -> None:
  """Raises DataError(where: ...) unless `rec` is a well-formed label record."""
  for field, kind in (("id", str), ("prompt", str), ("responses", list),
                      ("per_principle", list), ("mode", str)):
    if field not in rec:
      raise DataError(f"{where}: missing field {field!r}")
    if not isinstance(rec[field], kind):
      raise DataError(f"{where}: field {field!r} should be {kind.__name__}, got "
                      f"{type(rec[field]).__name__}")
  if "p_first_better" not in rec:
    raise DataError(f"{where}: missing field 'p_first_better'")
  responses = rec["responses"]
  if len(responses) != 2 or not all(isinstance(r, str) and r.strip() for r in responses):
    raise DataError(f"{where}: field 'responses' should be two non-empty strings")
  if rec["mode"] not in MODES:
    raise DataError(f"{where}: field 'mode' should be one of {MODES}, got {rec['mode']!r}")
  if "axis" in rec and (not isinstance(rec["axis"], str) or not rec["axis"].strip()):
    raise DataError(f"{where}: field 'axis' should be a non-empty string (the constitution's "
                    f"axis, e.g. 'harmless' or 'helpful'), got {rec['axis']!r}")
  _probability(rec["p_first_better"], "p_first_better", where)
  _probability(rec.get("p_soft"), "p_soft", where, optional=True)
  if not rec["per_principle"]:
    raise DataError(f"{where}: field 'per_principle' is empty")
  for i, e in enumerate(rec["per_principle"]):
    w = f"{where}: per_principle[{i}]"
    if not isinstance(e, dict) or not isinstance(e.get("principle_id"), str):
      raise DataError(f"{w}: should be an object with a 'principle_id'")
    _probability(e.get("p_first_better"), "p_first_better", w)
    _probability(e.get("p_a_orig"), "p_a_orig", w)
    _probability(e.get("p_a_swapped"), "p_a_swapped", w, optional=True)


@dataclasses.dataclass(frozen=True)
class FeedbackLabel:
  """One labelled pair as the preference-model trainer reads it."""
  id: str
  prompt: str
  responses: tuple[str, str]
  p_first_better: float
  mode: str
  per_principle: tuple[dict, ...]
  where: str  # "file:line"
  axis: str = ""  # 'harmless', 'helpful' or a constitution's name; '' in files from before axes


def read_feedback_file(path: str, *, allow_empty: bool = False) -> list[FeedbackLabel]:
  """The labels of a feedback jsonl, validated (probabilities in [0, 1], two non-empty
  responses, unique ids; either every record carries its `axis` or none does, since a preference
  model mixes axes by that tag); errors are DataError `file:line: ...`."""
  out, first_line = [], {}
  tagged = None  # (line, whether that line has an axis) of the first record
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    validate_record(obj, where)
    has_axis = "axis" in obj
    if tagged is None:
      tagged = (lineno, has_axis)
    elif has_axis != tagged[1]:
      raise DataError(f"{where}: {'has' if has_axis else 'has no'} 'axis' field but line "
                      f"{tagged[0]} {'has' if tagged[1] else 'has none'}: a labels file mixing "
                      "axes must tag every record (the feedback job writes 'axis')")
    if obj["id"] in first_line:
      raise DataError(f"{where}: duplicate id {obj['id']!r} (first on line "
                      f"{first_line[obj['id']]})")
    first_line[obj["id"]] = lineno
    out.append(FeedbackLabel(obj["id"], obj["prompt"], tuple(obj["responses"]),
                             float(obj["p_first_better"]), obj["mode"],
                             tuple(obj["per_principle"]), where, obj.get("axis", "")))
  if not out and not allow_empty:
    raise DataError(f"{path}: no labels in the file")
  return out


def append_records(path: str, records: Sequence[dict]) -> None:
  """Appends label records (each validated first: probabilities in [0, 1]) and fsyncs."""
  for r in records:
    validate_record(r, f"{path}: record for pair {r.get('id')!r} (not written)")
  append_jsonl(path, records)


def summarize(labels: Sequence[FeedbackLabel | dict]) -> dict:
  """Position bias, mean P(A) per order, mean |p - 0.5| and mean p over labelled pairs."""
  def field(x, name):
    return x[name] if isinstance(x, dict) else getattr(x, name)

  p = [field(x, "p_first_better") for x in labels]
  entries = [e for x in labels for e in field(x, "per_principle")]
  orig = [e["p_a_orig"] for e in entries]
  swapped = [e["p_a_swapped"] for e in entries if e.get("p_a_swapped") is not None]
  if not entries:
    orders = None
  elif len(swapped) == len(entries):
    orders = 2
  elif not swapped:
    orders = 1
  else:
    orders = "mixed"
  return {
      "labelled": len(labels),
      "position_bias": position_bias(orig + swapped) if entries else None,
      "position_bias_orders": orders,
      "mean_p_a_orig": float(np.mean(orig)) if orig else None,
      "mean_p_a_swapped": float(np.mean(swapped)) if swapped else None,
      "mean_abs_p_minus_half": float(np.mean(np.abs(np.asarray(p) - 0.5))) if p else None,
      "mean_p_first_better": float(np.mean(p)) if p else None,
  }
