"""Job `po_train`: preference optimisation of the policy on soft AI labels (DPO, IPO, or the
hard-label DPO baseline; `cai_jax.rl.po`) through the sharded training engine.

Data: the `feedback` job's labels (p = p_first_better) and/or human comparisons (HH-RLHF
chosen/rejected, p = 1 on the chosen side, sides drawn from the seed as in `pm_train`); with
`heldout_fraction` some AI-labelled pairs (by a hash of the pair id) are held out.

Reference: `po_train.reference` ('' = the initial policy, config.model.checkpoint). Its summed
answer log-probs on every pair are computed once, before the first step, and stored in
WORKDIR/po_train/reference_logprobs.json with the digests of the reference's weights and of the
token sequences (`data.po_pairs`); a rerun or resume reads them back only when both match. When
the reference is another checkpoint it is loaded for that pass (and for the KL evaluation) only.

Evaluation (before the first step, every `eval_every` steps and at the end), on the held-out
pairs: loss, implied preference accuracy against the labels, reward margin; and the KL of the
policy from the reference on held-out prompts: `kl_prompts` prompts (the held-out pairs', else
the training pairs', sorted by id) answered by the policy (temperature 1, a fixed key per prompt
so that every evaluation draws with the same random numbers), both models scoring the answers
with one program (`KLProbe`; exactly 0 at step 0).

Outputs under WORKDIR/po_train/: reference_logprobs.json, checkpoints/ (a rerun resumes from the
latest, data position included), metrics.jsonl and tb/ (loss, reward_margin, accuracy,
chosen/rejected implied rewards, lr, grad norm, tokens/s, MFU; eval_* and kl_*), summary.json,
and export_hf/ (the trained policy as an HF folder, like sl_train's).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax import parallel
from cai_jax.rl import rollout
from cai_jax.checkpoints import loader
from cai_jax.checkpoints.digest import params_digest
from cai_jax.config_defaults import ConfigError
from cai_jax.data import holdout, po_pairs
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.jobs.common import conversation_format, weights_options
from cai_jax.rl import po
from cai_jax.train import engine, optim, runner
from cai_jax.train.checkpointing import TrainCheckpoints


def check_config(c, mesh) -> None:
  if not c.labels and not c.human_comparisons:
    raise ConfigError("no training data: set --config.po_train.labels=LABELS.jsonl (the feedback "
                      "job's labels) and/or --config.po_train.human_comparisons=HH.jsonl(.gz)")
  if c.loss not in po.LOSSES:
    raise ConfigError(f"po_train.loss must be one of {po.LOSSES}, got {c.loss!r}")
  if not c.beta > 0:
    raise ConfigError(f"po_train.beta must be > 0, got {c.beta}")
  if not 0.0 <= c.label_smoothing < 0.5:
    raise ConfigError(f"po_train.label_smoothing must be in [0, 0.5), got {c.label_smoothing}")
  runner.check_batching(c, mesh, "po_train", ("loss_chunk_tokens", "kl_max_new_tokens"))
  if c.kl_prompts < 0:
    raise ConfigError(f"po_train.kl_prompts must be >= 0, got {c.kl_prompts}")
  if not 0.0 <= c.heldout_fraction < 1.0:
    raise ConfigError(f"po_train.heldout_fraction must be in [0, 1), got {c.heldout_fraction}")


def read_pairs(c, seed: int) -> tuple[list[prefs.Preference], list[prefs.Preference]]:
  """(training pairs, held-out pairs), every file validated (DataError file:line) before any
  model loads."""
  ai = prefs.read_ai_labels(c.labels) if c.labels else []
  human = prefs.read_human_comparisons(c.human_comparisons, seed) if c.human_comparisons else []
  train, held_out = ai, []
  if c.heldout_fraction > 0 and ai:
    train, held_out = holdout.split(ai, lambda x: x.id, c.heldout_fraction, f"po_train:{seed}")
  seen: dict[str, str] = {}
  for x in train + human + held_out:
    if x.id in seen:
      raise ConfigError(f"pair id {x.id!r} appears in two sources ({seen[x.id]} and {x.where}); "
                        "ids key the stored reference log-probs and must be unique")
    seen[x.id] = x.where
  return train + human, held_out


def make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings):
  """(the compiled train step, the compiled eval step)."""
  loss_fn = po.make_po_loss(model_cfg, loss=c.loss, beta=float(c.beta),
                            label_smoothing=float(c.label_smoothing),
                            chunk_tokens=c.loss_chunk_tokens)
  return engine.compile_train_and_eval(loss_fn, optimizer, shardings, mesh,
                                      micro_batches=c.micro_batches,
                                      learning_rate_fn=optim.schedule(opt_cfg))


def reference_logprobs(c, pairs, params, model_cfg, mesh, param_shardings, *, path: str,
                       digest: str, reference: str, pad_id: int) -> dict:
  """{pair id: (log pi_ref(a), log pi_ref(b))}: read from `path` when it belongs to this
  reference and these sequences, else computed with the reference's params and written."""
  tokens = po_pairs.token_digest(pairs)
  ids = [x.id for x in pairs]
  if os.path.exists(path):
    out = po_pairs.read_reference(path, model_digest=digest, tokens=tokens, ids=ids)
    print(f"po_train: reference log-probs of {len(out)} pairs read from {path}", flush=True)
    return out
  fn = engine.compile_eval_step(po.make_logprob_fn(model_cfg, chunk_tokens=c.loss_chunk_tokens),
                                param_shardings, mesh)
  out = {}
  for real, local in po_pairs.eval_batches(pairs, c.eval_batch_size, max_length=c.max_length,
                                           min_length=c.min_length,
                                           rows=parallel.process_rows(c.eval_batch_size),
                                           pad_id=pad_id):
    logp = np.asarray(jax.device_get(fn(params, parallel.global_batch(local, mesh))), np.float64)
    out.update({x.id: (float(logp[i, 0]), float(logp[i, 1])) for i, x in enumerate(real)})
  if jax.process_index() == 0:
    po_pairs.write_reference(path, out, model_digest=digest, tokens=tokens, reference=reference)
  print(f"po_train: reference log-probs of {len(out)} pairs computed ({path})", flush=True)
  return out


class KLProbe:
  """KL(policy || reference) on fixed prompts: the policy answers (temperature 1, one fixed key
  per prompt) and both models score those answers with one program. With r = log pi_ref(y_t) -
  log pi(y_t) at each answer token, `kl` is the mean over answers of sum_t (e^r - 1 - r) (the
  "k3" estimator: unbiased, never negative, low variance) and `kl_k1` that of sum_t -r (the
  plain log-ratio, unbiased but negative for some draws)."""

  def __init__(self, c, seed, prompts, model_cfg, tokenizer, fmt, mesh, param_shardings, params):
    from cai_jax.sampling.sampler import Sampler
    per_shard = parallel.batch_size_per_shard(mesh)
    self.c, self.mesh, self.fmt = c, mesh, fmt
    self.texts = [fmt.context(p) for p in prompts]
    self.multiple = math.lcm(per_shard, jax.process_count())
    self.sampler = Sampler(model_cfg, params, tokenizer, max_prompt_length=c.max_length,
                           max_batch=-(-c.eval_batch_size // per_shard) * per_shard,
                           mesh=mesh, eos_ids=fmt.stop_ids)
    self.keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed + 2), i))(
        jnp.arange(len(self.texts)))
    self.pad_id = tokenizer.pad_id

    def per_row(policy, ref, batch):
      lp, _ = rollout.policy_logprobs(model_cfg, policy, batch, chunk_tokens=c.loss_chunk_tokens,
                                      with_entropy=False)
      lr, _ = rollout.policy_logprobs(model_cfg, ref, batch, chunk_tokens=c.loss_chunk_tokens,
                                      with_entropy=False)
      r = (lr - lp) * batch["mask"]  # log pi_ref / pi at the policy's own tokens
      return jnp.stack([jnp.sum(jnp.expm1(r) - r, axis=-1), jnp.sum(-r, axis=-1)], axis=-1)

    batch_sharding = lambda: jax.sharding.NamedSharding(  # noqa: E731
        mesh, jax.sharding.PartitionSpec(parallel.BATCH_AXES))
    self.fn = parallel.run_under(mesh, jax.jit(
        per_row, in_shardings=(param_shardings, param_shardings, batch_sharding()),
        out_shardings=parallel.replicated(mesh)))

  def __call__(self, policy_params, ref_params) -> dict:
    from cai_jax.sampling.strategies import Sampling
    self.sampler.params = policy_params
    out = self.sampler.generate(self.texts, max_new_tokens=self.c.kl_max_new_tokens,
                                strategy=Sampling(temperature=1.0), keys=self.keys,
                                stop=tuple(self.c.kl_stop))
    prompt_ids, _ = self.sampler.encode(self.texts, add_bos=True)
    grid = rollout.grid_batch(prompt_ids, out.tokens, out.logprobs, pad_id=self.pad_id,
                              min_length=self.c.min_length)
    rows = len(self.texts)
    grid = parallel.pad_rows({k: grid[k] for k in ("tokens", "valid", "targets", "mask")},
                             self.multiple)  # copies of the last row, scored and dropped
    local = {k: v[parallel.process_rows(len(v))] for k, v in grid.items()}
    kl = np.asarray(jax.device_get(self.fn(policy_params, ref_params,
                                           parallel.global_batch(local, self.mesh))))[:rows]
    return {"kl": float(kl[:, 0].mean()), "kl_std": float(kl[:, 0].std()),
            "kl_k1": float(kl[:, 1].mean()), "kl_answer_tokens": float(np.mean(out.num_tokens))}


def run(config, workdir: str) -> dict:
  c = config.po_train
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.make_mesh(dict(config.mesh))
  check_config(c, mesh)
  train_prefs, held_prefs = read_pairs(c, config.seed)
  out_dir = os.path.join(workdir, "po_train")
  ckpts = TrainCheckpoints(os.path.join(out_dir, "checkpoints"), save_every=c.checkpoint_every,
                           keep=c.keep_checkpoints, async_save=c.async_checkpoints)
  resuming = ckpts.latest_step() is not None

  m = config.model
  load = lambda path: loader.load(  # noqa: E731
      path, cache_dir=os.path.expanduser(m.cache_dir),
      shardings_for=lambda cfg: engine.model_shardings(cfg, mesh), **weights_options(m))
  model = load(m.checkpoint)
  model_cfg = model.config.replace(remat=c.remat or False)
  param_shardings = engine.model_shardings(model_cfg, mesh)
  fmt = conversation_format(config, model.tokenizer)
  tok = lambda xs: po_pairs.tokenize(xs, model.tokenizer, max_length=c.max_length,  # noqa: E731
                                     append_eos=c.append_eos, fmt=fmt)
  train, held_out = tok(train_prefs), tok(held_prefs)

  # ---- the reference: its log-probs once, checked by digest on every rerun
  reference_path = c.reference or m.checkpoint
  ref_model = model if not c.reference else load(c.reference)
  if ref_model.config.vocab_size != model.config.vocab_size:
    raise ConfigError(f"po_train.reference {c.reference!r} has vocab_size "
                      f"{ref_model.config.vocab_size}, the policy {model.config.vocab_size}")
  digest = params_digest(ref_model.params)
  ref = reference_logprobs(c, train + held_out, ref_model.params, ref_model.config, mesh,
                           engine.model_shardings(ref_model.config, mesh),
                           path=c.reference_logprobs or os.path.join(out_dir,
                                                                     "reference_logprobs.json"),
                           digest=digest, reference=reference_path,
                           pad_id=model.tokenizer.pad_id)
  train, held_out = po_pairs.with_reference(train, ref), po_pairs.with_reference(held_out, ref)
  kl_prompts = sorted({x.id: x.prompt for x in (held_prefs or train_prefs)}.items())
  kl_prompts = [p for _, p in kl_prompts[:c.kl_prompts]]
  # The KL evaluation needs the reference's weights on device; the policy's state is donated
  # by every step, so a reference that is the initial policy is kept as a copy.
  ref_params = None
  if kl_prompts:
    ref_params = (jax.tree.map(jnp.copy, ref_model.params) if ref_model is model
                  else ref_model.params)
  if ref_model is not model:
    del ref_model

  steps = c.steps or c.epochs * math.ceil(len(train) / c.batch_size)
  opt_cfg, optimizer = optim.for_steps(config.optim, steps)
  shardings, abstract = engine.state_shardings(model_cfg, mesh, optimizer)
  meta = {"model_config": model_cfg.to_dict(), "job": "po_train", "loss": c.loss,
          "beta": float(c.beta), "reference_digest": digest,
          "labels": os.path.abspath(c.labels) if c.labels else ""}
  batches = po_pairs.batches(train, c.batch_size, seed=config.seed, max_length=c.max_length,
                             min_length=c.min_length, rows=parallel.process_rows(c.batch_size),
                             pad_id=model.tokenizer.pad_id)
  if resuming:
    del model.params  # the checkpoint holds newer parameters
  state = runner.resume_or_start(
      "po_train", ckpts, abstract, meta, batches,
      lambda: engine.new_state(model.params, optimizer, jax.random.PRNGKey(config.seed), shardings))
  step_fn, eval_fn = make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings)
  kl_probe = (KLProbe(c, config.seed, kl_prompts, model_cfg.replace(remat=False),
                      model.tokenizer, fmt, mesh, param_shardings, state.params)
              if kl_prompts else None)
  truncated = sum(x.truncated for x in train)
  if truncated:
    print(f"{truncated} of {len(train)} pairs were longer than max_length={c.max_length} and "
          "were truncated (prompt from the left first)", flush=True)

  def evaluate(step, st):
    result = {}
    sets = {"heldout": held_out} if held_out else {}
    if step in (0, steps):
      sets["train"] = train
    for name, pairs in sets.items():
      total = runner.eval_sums(eval_fn, st.params, (
          local for _, local in po_pairs.eval_batches(
              pairs, c.eval_batch_size, max_length=c.max_length, min_length=c.min_length,
              rows=parallel.process_rows(c.eval_batch_size), pad_id=model.tokenizer.pad_id)),
          mesh)
      decisive = max(total["sum_decisive"], 1e-9)
      result.update({f"eval_{name}_loss": total["loss_sum"] / max(total["weight"], 1e-9),
                     f"eval_{name}_accuracy": total["sum_correct"] / decisive,
                     f"eval_{name}_reward_margin": total["sum_reward_margin"] / decisive})
    if kl_probe is not None:
      result.update({f"eval_{k}": v for k, v in kl_probe(st.params, ref_params).items()})
    return result

  state, logged, start_step = runner.run_loop(
      name="po_train", out_dir=out_dir, state=state, step_fn=step_fn, local_batches=batches,
      mesh=mesh, steps=steps, ckpts=ckpts, meta=meta, model_config=model_cfg,
      peak_flops=c.peak_flops, show_progress=c.progress,
      extra_metrics=lambda m: {
          "reward_margin": m["reward_margin"] / max(m["decisive"], 1e-9),
          "accuracy": m["correct"] / max(m["decisive"], 1e-9),
          "chosen_reward": m["chosen_reward"] / max(m["decisive"], 1e-9),
          "rejected_reward": m["rejected_reward"] / max(m["decisive"], 1e-9),
          "truncated_pairs": float(truncated)},
      evaluate=evaluate, eval_every=c.eval_every, evaluate_at_start=True, evaluate_at_end=True)
  summary = {"steps": steps, "start_step": start_step, "loss": c.loss, "beta": float(c.beta),
             "pairs": len(train), "held_out_pairs": len(held_out),
             "kl_prompts": len(kl_prompts), "reference": reference_path,
             "reference_digest": digest, "initial_eval": runner.initial_metrics(out_dir),
             "truncated_pairs": truncated, "final": logged, "checkpoints": ckpts.directory}
  if c.export_hf:
    export = runner.export_hf(state.params, out_dir, model_cfg, model.tokenizer)
    if export:
      summary["export_hf"] = export
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    msg = (f"po_train ({c.loss}, beta {c.beta}): {steps} steps, final loss "
           f"{logged.get('loss', math.nan):.4f}, reward margin "
           f"{logged.get('reward_margin', math.nan):.4f}")
    for k in ("eval_heldout_accuracy", "eval_kl"):
      if k in logged:
        msg += f", {k} {logged[k]:.4f}"
    print(msg, flush=True)
  return summary
