"""Preference-optimisation data: labelled answer pairs -> policy sequences with response masks,
the reference's log-probs stored beside them, and padded pair batches.

A pair (`preferences.Preference`: prompt, two answers, p = P(first better)) becomes two SL-style
sequences, start + prompt + answer (+ end id), each with a mask over the answer's tokens, laid
out by the policy's conversation format exactly as `sl_train` lays out its examples
(`conversation.tokenize_prompt_completion`, `sl.fit_length`: prompt cut from the left first).

The reference's summed log-probs of both answers are computed once before training and written
to a JSON file with two digests: the reference model's parameters
(`checkpoints.digest.params_digest`) and the tokenised pairs (`token_digest`). A rerun or a
resumed run reads the file back only if both digests match, so a DPO batch never mixes the
log-probs of another model, or of other token sequences, into its margins.

Batches (`make_batch`): tokens, targets int32 [B, 2, L]; valid bool [B, 2, L]; weights float32
[B, 2, L] (on positions that predict an answer token); ref_logp float32 [B, 2]; p, weight
float32 [B]. L is the power-of-two bucket of the batch's longest sequence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterator, Sequence

import numpy as np

from cai_jax.data import conversation, sl
from cai_jax.data.jsonl import DataError, write_json_atomic
from cai_jax.shapes import pow2_bucket

REFERENCE_FORMAT = "cai_jax.po_reference.v1"


@dataclasses.dataclass(frozen=True)
class PairSequences:
  """A tokenised labelled pair: ids[s] and mask[s] (True on answer tokens) for answer s."""
  id: str
  ids: tuple[np.ndarray, np.ndarray]
  mask: tuple[np.ndarray, np.ndarray]
  p: float
  truncated: bool = False
  where: str = ""
  ref: tuple[float, float] | None = None   # the reference's summed answer log-probs


def tokenize(pairs, tokenizer, *, max_length: int, append_eos: bool, fmt=None
             ) -> list[PairSequences]:
  """Both answers of every pair as the policy reads them (see the module docstring)."""
  out = []
  for x in pairs:
    ids, masks, cut = [], [], False
    for response in x.responses:
      try:
        seq, mask = conversation.tokenize_prompt_completion(tokenizer, x.prompt, response,
                                                            append_eos=append_eos, fmt=fmt)
      except ValueError as e:
        raise DataError(f"{x.where or x.id}: {e}") from None
      seq, mask, truncated = sl.fit_length(seq, mask, max_length)
      ids.append(np.asarray(seq, np.int32))
      masks.append(np.asarray(mask, bool))
      cut = cut or truncated
    out.append(PairSequences(x.id, tuple(ids), tuple(masks), float(x.p), cut, x.where))
  return out


def token_digest(pairs: Sequence[PairSequences]) -> str:
  """sha256 over every pair's id, token ids and answer masks, in id order."""
  h = hashlib.sha256()
  for x in sorted(pairs, key=lambda e: e.id):
    h.update(x.id.encode("utf-8") + b"\0")
    for s in range(2):
      h.update(np.asarray(x.ids[s], np.int32).tobytes() + b"|")
      h.update(np.asarray(x.mask[s], np.uint8).tobytes() + b"|")
  return h.hexdigest()


def with_reference(pairs: Sequence[PairSequences], ref: dict[str, tuple[float, float]]
                   ) -> list[PairSequences]:
  return [dataclasses.replace(x, ref=tuple(ref[x.id])) for x in pairs]


# ---------------------------------------------------------------------------------------------
# The stored reference log-probs.


def write_reference(path: str, ref: dict[str, tuple[float, float]], *, model_digest: str,
                    tokens: str, reference: str) -> None:
  write_json_atomic(path, {"format": REFERENCE_FORMAT, "model_digest": model_digest,
                           "token_digest": tokens, "reference": reference,
                           "logprobs": {k: [float(a), float(b)] for k, (a, b) in
                                        sorted(ref.items())}})


def read_reference(path: str, *, model_digest: str, tokens: str,
                   ids: Sequence[str]) -> dict[str, tuple[float, float]]:
  """The stored log-probs, after checking that they belong to this reference model and these
  token sequences (DataError naming the file otherwise)."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: cannot read the reference log-probs: {e}") from None
  if not isinstance(obj, dict) or obj.get("format") != REFERENCE_FORMAT:
    raise DataError(f"{path}: not a reference log-prob file (format {REFERENCE_FORMAT!r})")
  if obj.get("model_digest") != model_digest:
    raise DataError(
        f"{path}: reference log-probs computed by another model (digest "
        f"{str(obj.get('model_digest'))[:16]}..., from {obj.get('reference')!r}; this run's "
        f"reference has {model_digest[:16]}...). Delete the file to recompute them, or point "
        "po_train.reference at the model that computed them")
  if obj.get("token_digest") != tokens:
    raise DataError(f"{path}: reference log-probs of other token sequences (labels, max_length, "
                    "conversation format or tokenizer changed); delete the file to recompute")
  logprobs = obj.get("logprobs", {})
  missing = [i for i in ids if i not in logprobs]
  if missing:
    raise DataError(f"{path}: no reference log-probs for {len(missing)} pairs (first "
                    f"{missing[0]!r})")
  return {i: (float(logprobs[i][0]), float(logprobs[i][1])) for i in ids}


# ---------------------------------------------------------------------------------------------
# Batches.


def bucket_length(pairs, min_length: int, max_length: int) -> int:
  longest = max((len(ids) for x in pairs if x is not None for ids in x.ids), default=1)
  return min(max_length, pow2_bucket(longest, min_length))


def make_batch(pairs: Sequence[PairSequences | None], length: int, *, pad_id: int = 0
               ) -> dict[str, np.ndarray]:
  """The arrays of the module docstring; `None` rows are padding (weight 0)."""
  B = len(pairs)
  tokens = np.full((B, 2, length), pad_id, np.int32)
  valid = np.zeros((B, 2, length), bool)
  mask = np.zeros((B, 2, length), bool)
  ref = np.zeros((B, 2), np.float32)
  p = np.full((B,), 0.5, np.float32)
  weight = np.zeros((B,), np.float32)
  for r, x in enumerate(pairs):
    if x is None:
      continue
    for s in range(2):
      n = len(x.ids[s])
      if n > length:
        raise ValueError(f"pair {x.id}: a sequence of {n} tokens does not fit length {length}")
      tokens[r, s, :n], valid[r, s, :n], mask[r, s, :n] = x.ids[s], True, x.mask[s]
    ref[r] = x.ref if x.ref is not None else (0.0, 0.0)
    p[r], weight[r] = x.p, 1.0
  targets = np.zeros_like(tokens)
  targets[..., :-1] = tokens[..., 1:]
  weights = np.zeros((B, 2, length), np.float32)
  weights[..., :-1] = mask[..., 1:]
  return {"tokens": tokens, "targets": targets, "valid": valid, "weights": weights,
          "ref_logp": ref, "p": p, "weight": weight}


def batches(pairs: Sequence[PairSequences], batch_size: int, *, seed: int, max_length: int,
            min_length: int, rows: slice | None = None, pad_id: int = 0) -> sl.BatchIterator:
  """Endless shuffled batches with a saveable position (`sl.BatchIterator`'s epoch cursor)."""
  def collate(chosen, local_rows):
    length = bucket_length(chosen, min_length, max_length)
    return make_batch(chosen[local_rows], length, pad_id=pad_id)
  return sl.BatchIterator(list(pairs), batch_size, seed=seed, max_length=max_length,
                          min_length=min_length, rows=rows, collate=collate)


def eval_batches(pairs: Sequence[PairSequences], batch_size: int, *, max_length: int,
                 min_length: int, rows: slice | None = None, pad_id: int = 0
                 ) -> Iterator[tuple[list[PairSequences], dict]]:
  """(the batch's pairs, this process's arrays) over every pair once, in order; the last batch
  is filled with padding rows."""
  rows = rows or slice(0, batch_size)
  for start in range(0, len(pairs), batch_size):
    chunk: list = list(pairs[start:start + batch_size])
    real = list(chunk)
    chunk += [None] * (batch_size - len(chunk))
    yield real, make_batch(chunk[rows], bucket_length(chunk, min_length, max_length),
                           pad_id=pad_id)
