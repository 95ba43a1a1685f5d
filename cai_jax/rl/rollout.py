"""PPO for RL-CAI, the parts between the sampler and `ppo.py`'s math: rollout batches on the
"prediction grid", the scoring passes (policy, reference, value model, preference model), the
PPO objective for the training engine, prompt order, running reward statistics and the checks
that run before any compute.

The prediction grid. A rollout row is BOS + prompt (P tokens with BOS) + the R sampled response
tokens (as generated, the tokens of a stop string or the EOS included), right-padded to a
power-of-two length L. Every [B, L] array is indexed by the position p whose hidden state
predicts token p + 1:

    targets[b, p] = tokens[b, p + 1]        (0 at p = L - 1)
    mask[b, p]    = 1  where tokens[b, p + 1] is a response token, i.e. p in [P - 1, P + R - 2]
    end_index[b]  = P + R - 2               (the grid position of the last response token)

so log-probs, values and per-token rewards all live on one grid, and `ppo.gae` (which skips
masked positions) runs on it directly: the prompt positions simply carry no reward, advantage
or loss. The policy's and the reference's log-probs are computed in the response window only
(`window[b, j] = P - 1 + j` for j < W = max_new_tokens, `response_window`): the vocabulary
projection, most of a small model's FLOPs (168M of 268M parameters at 270M with a 262,144-token
vocabulary), then runs over W positions per row instead of L, and the positions outside the
window read 0. The value at grid position p is V(state after tokens[0..p]): the value of the
state in which response token p + 1 is chosen.

The preference model scores a separately built row: BOS + prompt + the trimmed response *text*
(the sampler's text, cut before the stop string, EOS removed), re-encoded exactly as `pm_train`
built its pairs (`preferences.encode_sequence`: EOS appended when the PM was trained that way,
left truncation after BOS to the PM's max_length), read at that row's explicit last index.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.rl import ppo
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.data.jsonl import DataError
from cai_jax.model import decoder, heads
from cai_jax.model.config import DecoderConfig
from cai_jax.shapes import pow2_bucket
from cai_jax.train import lm, losses

_F32 = jnp.float32
TOKENIZER_PROBE = "\n\nHuman: Héllo, wörld! 123 <tag> naïve ☃\n\nAssistant: Sure."


# ---------------------------------------------------------------------------------------------
# Checks before compute


def check_same_tokenizer(policy_tok, pm_tok, *, policy_vocab: int, pm_vocab: int,
                         where: str) -> None:
  """CheckpointError unless the preference model reads the policy's tokens the same way: equal
  model vocabulary sizes, equal tokenizer sizes and special ids, the same ids for a probe
  string, and the same pieces at 64 ids spread over the vocabulary. (A PM trained on another
  tokenizer would score the re-encoded text with embeddings of other pieces: silently wrong.)"""
  problems = []
  if policy_vocab != pm_vocab:
    problems.append(f"model vocab_size {pm_vocab} (policy {policy_vocab})")
  if policy_tok.vocab_size != pm_tok.vocab_size:
    problems.append(f"tokenizer size {pm_tok.vocab_size} (policy {policy_tok.vocab_size})")
  for name in ("bos_id", "eos_id", "pad_id"):
    if getattr(policy_tok, name) != getattr(pm_tok, name):
      problems.append(f"{name} {getattr(pm_tok, name)} (policy {getattr(policy_tok, name)})")
  if not problems:
    a = policy_tok.encode(TOKENIZER_PROBE, add_bos=True)
    b = pm_tok.encode(TOKENIZER_PROBE, add_bos=True)
    if a != b:
      problems.append(f"probe text encodes to {b[:12]}... (policy {a[:12]}...)")
    n = policy_tok.vocab_size
    for i in sorted(set(np.linspace(0, n - 1, 64).astype(int).tolist())):
      if policy_tok.id_to_piece(i) != pm_tok.id_to_piece(i):
        problems.append(f"piece {i} is {pm_tok.id_to_piece(i)!r} "
                        f"(policy {policy_tok.id_to_piece(i)!r})")
        break
  if problems:
    raise CheckpointError(f"{where}: the preference model's tokenizer/vocabulary differs from "
                          f"the policy's: {'; '.join(problems)}. Train the PM from the same "
                          "base model as the policy")


def prompt_ids(records, tokenizer, max_prompt_tokens: int, *, skip_long: bool, fmt=None,
               context=None) -> tuple[list, list[list[int]], list[str]]:
  """(kept records, their ids BOS + prompt, ids of the prompts skipped as too long); with a
  conversation format `fmt`, the prompt as that format lays it out (`fmt.context`); with
  `context` (prompt -> text, e.g. `PolicyLayout.text`), that text, prefix included.

  A prompt longer than `max_prompt_tokens` (BOS included) is never cut: DataError listing them
  (first 10), or, with `skip_long`, left out and returned in the third list."""
  text = context or (fmt.context if fmt else (lambda p: p))
  ids = tokenizer.encode_batch([text(r.prompt) for r in records], add_bos=True)
  long = [(r.id, len(x)) for r, x in zip(records, ids) if len(x) > max_prompt_tokens]
  if long and not skip_long:
    shown = ", ".join(f"{rid} ({n} tokens)" for rid, n in long[:10])
    more = f" and {len(long) - 10} more" if len(long) > 10 else ""
    where = ", ".join(dict.fromkeys(r.source for r in records
                                    if r.id in {rid for rid, _ in long}))
    raise DataError(f"{where}: {len(long)} of {len(records)} prompts are longer than "
                    f"max_prompt_tokens={max_prompt_tokens} (BOS included): {shown}{more}. "
                    "Raise rl_train.max_prompt_tokens (it counts what conversation.policy_prefix "
                    "puts before a prompt) or set rl_train.long_prompts='skip'")
  long_ids = {rid for rid, _ in long}
  kept = [(r, x) for r, x in zip(records, ids) if r.id not in long_ids]
  if not kept:
    raise DataError(f"{records[0].source}: every prompt is longer than max_prompt_tokens="
                    f"{max_prompt_tokens}")
  return [r for r, _ in kept], [x for _, x in kept], sorted(long_ids)


# ---------------------------------------------------------------------------------------------
# Prompt order and running statistics (host state saved with every checkpoint)


class PromptOrder:
  """Prompts in a deterministic order: epoch e is a permutation drawn from (seed, e); `take`
  continues across epochs. `position()` / `restore()` round-trip through JSON."""

  def __init__(self, n: int, seed: int):
    if n <= 0:
      raise ValueError("no prompts")
    self.n, self.seed = n, int(seed)
    self.epoch, self.index = 0, 0

  def _perm(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def take(self, k: int) -> list[int]:
    out: list[int] = []
    while len(out) < k:
      perm = self._perm(self.epoch)
      m = min(k - len(out), self.n - self.index)
      out.extend(int(i) for i in perm[self.index:self.index + m])
      self.index += m
      if self.index == self.n:
        self.epoch, self.index = self.epoch + 1, 0
    return out

  def position(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def restore(self, position: dict) -> None:
    self.epoch, self.index = int(position["epoch"]), int(position["index"])


class PromptMix:
  """The rollout rows of two prompt sets, red-team (indices 0..n_red-1) and helpfulness
  (n_red..n_red+n_helpful-1): `helpful_rows=None` draws from their union in one order (each
  set in proportion to its size, the paper's RL prompts); otherwise every batch holds exactly
  `helpful_rows` helpfulness prompts, each set in its own order (seeds seed and seed + 1).
  `position()` / `restore()` round-trip through JSON."""

  def __init__(self, n_red: int, n_helpful: int, seed: int, helpful_rows: int | None = None):
    self.n_red, self.helpful_rows = n_red, helpful_rows
    if helpful_rows is None:
      self.orders = {"all": PromptOrder(n_red + n_helpful, seed)}
    else:
      self.orders = {"red_team": PromptOrder(n_red, seed) if n_red else None,
                     "helpful": PromptOrder(n_helpful, seed + 1) if n_helpful else None}

  def take(self, k: int) -> list[int]:
    if self.helpful_rows is None:
      return self.orders["all"].take(k)
    h = self.helpful_rows
    red = self.orders["red_team"].take(k - h) if k - h else []
    helpful = self.orders["helpful"].take(h) if h else []
    return red + [self.n_red + i for i in helpful]

  def position(self) -> dict:
    if self.helpful_rows is None:  # the layout of a single PromptOrder (older checkpoints)
      return self.orders["all"].position()
    return {name: o.position() for name, o in self.orders.items() if o is not None}

  def restore(self, position: dict) -> None:
    if self.helpful_rows is None:
      if "epoch" not in position:
        raise ValueError("the checkpoint's prompt position is for a fixed helpful_fraction; "
                         "this run draws from both prompt sets together")
      self.orders["all"].restore(position)
      return
    if "epoch" in position:
      raise ValueError("the checkpoint's prompt position is for one prompt order; this run "
                       "has a fixed rl_train.helpful_fraction")
    for name, o in self.orders.items():
      if o is not None:
        o.restore(position[name])


@dataclasses.dataclass
class RunningMoments:
  """Mean and (population) variance of every score seen so far, merged batch by batch (Chan et
  al.'s parallel update, exact in float64)."""
  count: float = 0.0
  mean: float = 0.0
  m2: float = 0.0

  def update(self, x) -> None:
    x = np.asarray(x, np.float64).ravel()
    if not x.size:
      return
    n_b, mean_b = float(x.size), float(x.mean())
    m2_b = float(np.sum(np.square(x - mean_b)))
    n = self.count + n_b
    delta = mean_b - self.mean
    self.mean += delta * n_b / n
    self.m2 += m2_b + delta * delta * self.count * n_b / n
    self.count = n

  @property
  def std(self) -> float:
    return float(np.sqrt(self.m2 / self.count)) if self.count > 0 else 1.0

  def normalize(self, x, eps: float = 1e-6) -> np.ndarray:
    return ((np.asarray(x, np.float64) - self.mean) / max(self.std, eps)).astype(np.float32)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "RunningMoments":
    return cls(float(d["count"]), float(d["mean"]), float(d["m2"]))


# ---------------------------------------------------------------------------------------------
# Host-side batches


def response_window(prompt_len_B: np.ndarray, L: int, W: int) -> np.ndarray:
  """[B, W] int32 grid positions P - 1 + j of each row's first W response predictions, those
  past the grid's end (only after the row's response) set to -1."""
  pos = np.asarray(prompt_len_B, np.int32)[:, None] - 1 + np.arange(W, dtype=np.int32)[None]
  return np.where(pos < L, pos, -1).astype(np.int32)


def grid_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               sampler_logprobs: Sequence[np.ndarray], *, pad_id: int, min_length: int,
               window: int = 0) -> dict[str, np.ndarray]:
  """The rollout on the prediction grid (module docstring): tokens, valid, targets [B, L] int;
  mask, sampler_logp [B, L] float32; end_index, prompt_len, response_len [B] int32; with
  `window` > 0 (the longest response possible, max_new_tokens) also `window` [B, W]
  (`response_window`, W = min(window, L)), where `policy_logprobs` computes log-probs. Every
  response has at least one token (the sampler always emits one)."""
  B = len(prompts)
  lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
  L = pow2_bucket(max(lengths), min_length)
  tokens = np.full((B, L), pad_id, np.int32)
  valid = np.zeros((B, L), bool)
  mask = np.zeros((B, L), np.float32)
  slogp = np.zeros((B, L), np.float32)
  end = np.zeros((B,), np.int32)
  plen = np.zeros((B,), np.int32)
  rlen = np.zeros((B,), np.int32)
  for b, (p, r, lp) in enumerate(zip(prompts, responses, sampler_logprobs)):
    P, R = len(p), len(r)
    if R < 1:
      raise ValueError(f"row {b}: empty response (the sampler emits at least one token)")
    tokens[b, :P] = p
    tokens[b, P:P + R] = r
    valid[b, :P + R] = True
    mask[b, P - 1:P + R - 1] = 1.0
    slogp[b, P - 1:P + R - 1] = np.asarray(lp, np.float32)[:R]
    end[b], plen[b], rlen[b] = P + R - 2, P, R
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  out = {"tokens": tokens, "valid": valid, "targets": targets, "mask": mask,
         "sampler_logp": slogp, "end_index": end, "prompt_len": plen, "response_len": rlen}
  if window > 0:
    if int(rlen.max()) > window:
      raise ValueError(f"a response of {int(rlen.max())} tokens is longer than the log-prob "
                       f"window ({window})")
    out["window"] = response_window(plen, L, min(window, L))
  return out


def pm_batch(prompt_ids_no_bos: Sequence[Sequence[int]], response_texts: Sequence[str],
             tokenizer, *, append_eos: bool, max_length: int, min_length: int, fmt=None
             ) -> tuple[dict[str, np.ndarray], int]:
  """(tokens/valid [B, L], last [B]; number of rows cut to the PM's max_length): BOS + prompt +
  response text (+ EOS, or the conversation format's end id), the way `pm_train` built its
  training sequences (`preferences.tokenize`)."""
  from cai_jax.data.preferences import encode_sequence

  texts = [fmt.response(t) for t in response_texts] if fmt else list(response_texts)
  resp = tokenizer.encode_batch(texts, add_bos=False)
  end_id = fmt.end_id if fmt else tokenizer.eos_id
  rows, truncated = [], 0
  for p, r in zip(prompt_ids_no_bos, resp):
    ids, cut = encode_sequence(p, r, start_ids=tokenizer.start_ids, eos_id=end_id,
                               max_length=max_length, append_eos=append_eos)
    rows.append(ids)
    truncated += bool(cut)
  L = pow2_bucket(max(len(x) for x in rows), min_length)
  tokens = np.full((len(rows), L), tokenizer.pad_id, np.int32)
  valid = np.zeros((len(rows), L), bool)
  last = np.zeros((len(rows),), np.int32)
  for b, ids in enumerate(rows):
    tokens[b, :len(ids)] = ids
    valid[b, :len(ids)] = True
    last[b] = len(ids) - 1
  return {"tokens": tokens, "valid": valid, "last": last}, truncated


def target_token_scores(responses: Sequence[Sequence[int]], token_id: int) -> np.ndarray:
  """The programmatic reward for tests: the fraction of each response's generated tokens that
  equal `token_id`."""
  return np.asarray([np.mean(np.asarray(r) == token_id) if len(r) else 0.0 for r in responses],
                    np.float32)


# ---------------------------------------------------------------------------------------------
# Model passes


def token_logprobs_entropy(hidden_BLD: jax.Array, embedding_VD: jax.Array, targets_BL: jax.Array,
                           *, chunk_tokens: int = 1024, dtype=jnp.float32,
                           softcap: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(log p(target), entropy of the next-token distribution), both [B, L] float32, chunked over
  L exactly like `losses.token_logprobs` (`losses.map_chunks`: one chunk's [B, c, V] logits at
  a time): the entropy costs one more elementwise pass over the chunk's logits, never a
  [B, L, V] array, so it is affordable for 262,144-token vocabularies."""

  def chunk(h_BcD, t_Bc):
    logits = jnp.einsum("BcD,VD->BcV", h_BcD.astype(dtype), embedding_VD.astype(dtype))
    logits = decoder.softcap(logits.astype(_F32), softcap)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t_Bc[..., None], axis=-1)[..., 0]
    p = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(p * logits, axis=-1)
    return picked - lse, entropy

  return losses.map_chunks(chunk, hidden_BLD, targets_BL, chunk_tokens)


def value_apply(config: DecoderConfig, params, tokens_BL, valid_BL) -> jax.Array:
  """[B, L] float32 values: the ScalarHead on the value decoder's hidden state at every
  position (`params` = {"decoder", "head"}, the preference model's layout)."""
  hidden = lm.hidden_states(config, params["decoder"], tokens_BL, valid_BL)
  return heads.ScalarHead(config.param_dtype).apply({"params": params["head"]}, hidden)


def policy_logprobs(config: DecoderConfig, params, batch, *, chunk_tokens: int,
                    with_entropy: bool):
  """(log p(target), entropy or None), [B, L] float32 on the prediction grid. With
  batch["window"] (`response_window`) only those positions go through the vocabulary
  projection; the others read 0."""
  hidden = lm.hidden_states(config, params, batch["tokens"], batch["valid"])
  emb = decoder.output_table(params)
  dtype = jnp.dtype(config.dtype)
  targets = batch["targets"]
  window = batch.get("window")
  if window is not None:
    inside = window >= 0
    at = jnp.where(inside, window, 0)
    hidden = jnp.take_along_axis(hidden, at[..., None], axis=1)
    targets = jnp.take_along_axis(targets, at, axis=1)
  if with_entropy:
    out = token_logprobs_entropy(hidden, emb, targets, chunk_tokens=chunk_tokens,
                                 dtype=dtype, softcap=config.final_softcap)
  else:
    out = (losses.token_logprobs(hidden, emb, targets, chunk_tokens=chunk_tokens,
                                 dtype=dtype, softcap=config.final_softcap), None)
  if window is None:
    return out
  B, L = batch["targets"].shape
  rows = jnp.arange(B)[:, None]
  put = jnp.where(inside, window, L)  # L is out of bounds: dropped (-1 would mean L - 1)
  to_grid = lambda x_BW: jnp.zeros((B, L), x_BW.dtype).at[rows, put].set(  # noqa: E731
      x_BW, mode="drop")
  return tuple(None if x is None else to_grid(x) for x in out)


def make_score_fn(policy_cfg: DecoderConfig, ref_cfg: DecoderConfig, value_cfg: DecoderConfig, *,
                  chunk_tokens: int):
  """(policy params, reference params, value params, grid batch) -> {"logp", "entropy",
  "ref_logp", "values"}, each [B, L] float32: the rollout's old log-probs, the reference's,
  and the old values, all from the training graph."""

  def score(policy_params, ref_params, value_params, batch):
    logp, entropy = policy_logprobs(policy_cfg, policy_params, batch, chunk_tokens=chunk_tokens,
                                    with_entropy=True)
    ref_logp, _ = policy_logprobs(ref_cfg, ref_params, batch, chunk_tokens=chunk_tokens,
                                  with_entropy=False)
    values = value_apply(value_cfg, value_params, batch["tokens"], batch["valid"])
    return {"logp": logp, "entropy": entropy, "ref_logp": ref_logp, "values": values}

  return score


def make_pm_fn(pm_cfg: DecoderConfig):
  """(PM params, {"tokens", "valid", "last"}) -> [B] float32 scores."""
  return lambda params, batch: heads.reward_apply(pm_cfg, params, batch["tokens"],
                                                  batch["valid"], batch["last"])


@functools.partial(jax.jit, static_argnames=("estimator",))
def advantages(score_B, logp_BL, ref_logp_BL, values_BL, mask_BL, end_index_B, kl_coef, gamma,
               lam, estimator: str = "k1") -> dict[str, jax.Array]:
  """Per-token KL penalty + score at the end index -> GAE -> advantages whitened over the whole
  rollout batch. Also the per-sequence KL sums (chosen estimator, k1 and k3) and the
  explained variance of the old values."""
  kl = ppo.kl_per_token(logp_BL, ref_logp_BL, estimator)
  rewards = ppo.token_rewards(score_B, kl, mask_BL, kl_coef, end_index_B)
  adv, returns = ppo.gae(rewards, values_BL, mask_BL, gamma, lam)
  m = mask_BL.astype(_F32)
  return {
      "advantages": ppo.whiten(adv, mask_BL),
      "returns": returns,
      "kl_seq": jnp.sum(kl * m, axis=1),
      "kl_k1_seq": jnp.sum(ppo.kl_per_token(logp_BL, ref_logp_BL, "k1") * m, axis=1),
      "kl_k3_seq": jnp.sum(ppo.kl_per_token(logp_BL, ref_logp_BL, "k3") * m, axis=1),
      "reward_seq": jnp.sum(rewards * m, axis=1),
      "explained_variance": ppo.explained_variance(values_BL, returns, mask_BL),
  }


def make_ppo_loss(policy_cfg: DecoderConfig, value_cfg: DecoderConfig, *, clip_eps: float,
                  clip_eps_value: float, vf_coef: float, ent_coef: float, chunk_tokens: int):
  """loss_fn(params {"policy", "value"}, minibatch, rng) -> (pg_sum + vf_coef * vf_sum -
  ent_coef * entropy_sum, sums) for `engine.make_train_step`: every term is a sum over response
  tokens and `weight` their count, so the engine's single division gives exact token means
  across micro-batches and hosts. The entropy is computed (chunked) only when ent_coef > 0."""
  with_entropy = ent_coef > 0

  def loss_fn(params, batch, rng):
    del rng
    mask = batch["mask"]
    logp, entropy = policy_logprobs(policy_cfg, params["policy"], batch,
                                    chunk_tokens=chunk_tokens, with_entropy=with_entropy)
    pg_sum, count, stats = ppo.policy_loss(logp, batch["old_logp"], batch["advantages"], mask,
                                           clip_eps)
    values = value_apply(value_cfg, params["value"], batch["tokens"], batch["valid"])
    vf_sum, _ = ppo.value_loss(values, batch["old_values"], batch["returns"], mask,
                               clip_eps_value)
    loss = pg_sum + vf_coef * vf_sum
    sums = {"weight": count, "sum_pg_loss": pg_sum, "sum_vf_loss": vf_sum,
            "sum_clipfrac": stats["clipfrac_sum"], "sum_approx_kl": stats["approx_kl_sum"],
            "sum_approx_kl_k3": stats["approx_kl_k3_sum"], "sum_ratio": stats["ratio_sum"]}
    if with_entropy:
      ent_sum, _ = ppo.masked_sum_count(entropy, mask)
      loss = loss - ent_coef * ent_sum
      sums["sum_entropy"] = ent_sum
    return loss, sums

  return loss_fn


@dataclasses.dataclass(frozen=True)
class GuardResult:
  """What the rollout guards found: `kind` None (go on), 'nonfinite', 'kl' or 'collapse', a
  message for the stop, and the collapse counter to carry to the next iteration."""
  kind: str | None
  message: str
  collapse_count: int


def rollout_guards(arrays: dict[str, np.ndarray], *, kl: float, kl_ceiling: float,
                   answer_tokens: float, min_response_tokens: float, collapse_count: int,
                   collapse_patience: int) -> GuardResult:
  """The checks on one rollout, in order: every array finite; the mean per-sequence KL at most
  `kl_ceiling` (0 = no ceiling); the mean answer length at least `min_response_tokens`, else
  the collapse counter grows and reaching `collapse_patience` (0 = never) stops the run."""
  bad = [name for name, v in arrays.items() if not np.all(np.isfinite(np.asarray(v)))]
  if bad:
    return GuardResult("nonfinite", f"non-finite {', '.join(bad)} in the rollout",
                       collapse_count)
  if kl_ceiling and not kl <= kl_ceiling:
    return GuardResult("kl", f"KL to the reference {kl:.4g} (mean per sequence) exceeds "
                       f"kl_ceiling={kl_ceiling}", collapse_count)
  count = collapse_count + 1 if answer_tokens < min_response_tokens else 0
  if collapse_patience and count >= collapse_patience:
    return GuardResult("collapse", f"collapse: mean answer length {answer_tokens:.2f} tokens < "
                       f"min_response_tokens={min_response_tokens} for {count} iteration(s) in "
                       "a row", count)
  return GuardResult(None, "", count)


def all_finite(tree) -> jax.Array:
  """True when every element of every (floating) leaf is finite (jit it)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def zero_head(config: DecoderConfig) -> dict:
  """A value head that starts at 0 everywhere (kernel and bias zeros), host arrays."""
  return heads.init_head(config, jax.random.PRNGKey(0), scale=0.0)


def boxed_trainable(policy_cfg: DecoderConfig, value_cfg: DecoderConfig) -> dict[str, Any]:
  """The trainable tree's abstract parameters with their logical boxes: {"policy": decoder,
  "value": {"decoder", "head"}}; `parallel.param_specs` maps them onto a mesh."""
  return {"policy": decoder.abstract_params(policy_cfg),
          "value": heads.abstract_params(value_cfg)}
