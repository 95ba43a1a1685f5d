"""Job `rl_train`: RL-CAI, PPO on the policy against the preference model with a KL penalty to
the frozen initial policy (Bai et al., 2022, section 4; the PPO of Ziegler et al., 2019).

Models (four):
- policy: `config.model.checkpoint` ('' = WORKDIR/sl_train/export_hf), trained;
- value model: a decoder + ScalarHead applied at every position, trained; initialised from the
  PM (`value_init='pm'`: its decoder and head) or from the policy (`'policy'`: head zeros);
- reference: the initial policy again, frozen, read from the checkpoint a second time so it
  owns its buffers (the train state is donated every step), stored in `frozen_dtype`;
- preference model: `rl_train.pm` ('' = WORKDIR/pm_train/pm), frozen, in `frozen_dtype`.
  Its tokenizer and vocabulary must be the policy's (CheckpointError before any compute).
The trainable parameters are one TrainState, params {"policy": decoder, "value": {"decoder",
"head"}}, under one optax optimizer (config.optim) and the engine's shardings.
Memory for the default 270M model in float32: policy and value with AdamW 3.2 GB each (+1.1 GB
of gradients each during a step), reference and PM 1.1 GB each (0.54 GB in bfloat16); about 10 GB
in all before activations, within a 24 GB CPU machine.

One iteration:
1. rollout: `batch_size` prompts in a deterministic order (position checkpointed) from the
   red-team prompts (`prompts`) and the helpfulness prompts (`helpful_prompts`), drawn together
   or at a fixed `helpful_fraction` of each batch (`rollout.PromptMix`); the policy reads what
   `conversation.policy_prefix` puts before a prompt (the layout `sample_pairs` sampled the PM's
   pairs with, `policy_layout`; the PM itself scores the prompt and answer alone). Sampled by
   one Sampler holding the current policy parameters, from the raw distribution (temperature 1,
   no top-k/top-p by default), stopped at `stop` strings / EOS after at most `max_new_tokens`;
2. scoring (jitted, lengths bucketed to powers of two): old log-probs, reference log-probs,
   values and entropy on the prediction grid (cai_jax.rl.rollout), recomputed with the
   training graph (the gap to the sampler's own log-probs is logged, `sampler_logprob_gap`:
   a cheap mismatch guard); the PM score of BOS +
   prompt + trimmed response text at its explicit last index (or the programmatic
   `target_token` reward); the missing-end penalty for rows cut at the token budget; optional
   running normalisation; per-token KL (k1/k2/k3) and token rewards; GAE; advantages whitened
   over the whole batch;
3. update: `ppo_epochs` passes over shuffled minibatches of `minibatch_size` rows, one engine
   step each (clipped policy loss + vf_coef x clipped value loss - ent_coef x entropy, sums over
   tokens divided once by the token count);
4. KL coefficient update (fixed or adaptive), metrics, samples, checkpoint.

Reward terms, in this order: the raw score (PM or programmatic; metric `score`), running
normalisation when `normalize_reward` (statistics of every score seen so far, this batch
included, so iteration 1 is normalised by its own batch; saved in checkpoints), then the
missing-end penalty added to rows that hit `max_new_tokens` (in normalised units when
normalising; metric `reward_norm`; `reward_raw` is the raw score plus the penalty), then
-kl_coef x KL on every response token (`reward_total` = the per-sequence sum PPO sees).
`kl` is the mean per-sequence sum of the chosen estimator; `kl_k1` and `kl_k3` are logged too.
The entropy bonus (ent_coef > 0) uses the same chunked projection as the log-probs (one chunk
of [B, c, V] logits at a time), so it is affordable for a 262k vocabulary.

Bad input stops before any weights load: a batch that does not divide into minibatches (or
minibatches into micro-batches), a missing or unreadable PM folder when the reward or the value
init needs one, a PM whose tokenizer or vocabulary differs from the policy's (model vocab_size,
tokenizer size and special ids, a probe string's ids, 64 pieces spread over the vocabulary),
prompts longer than `max_prompt_tokens` (DataError listing them; `long_prompts='skip'` drops
and lists them instead: prompts are never cut), and max_prompt_tokens + max_new_tokens beyond
the model's max_seq_len.

Guards (each stops the run with a message naming the iteration, exit status 3 from the CLI):
non-finite scores, log-probs, values, advantages, losses, gradients or parameters; the mean
per-sequence KL above `kl_ceiling`; the mean answer length (the trimmed answer text re-encoded)
below `min_response_tokens` for `collapse_patience` iterations in a row. The rollout of
iteration i judges the policy that iteration i - 1 produced, so a scheduled checkpoint is
written only once the next rollout has passed the guards (the final checkpoint and one written
on SIGTERM are not judged): a guard stop never leaves the bad state as the latest checkpoint.
A restart resumes from the latest checkpoint: state, iteration,
prompt position, KL coefficient, reward statistics and the collapse counter.

Probe (what the report reads as "did PPO raise the reward"): `probe_count` fixed prompts from
`probe_prompts` (held out: sharing an id with `prompts` is a ConfigError) are answered greedily
by the policy before the first update (metrics record 0), every `probe_every` iterations and
after the last; the reward model scores the answers (`probe_score`, its std, and
`probe_answer_tokens`; the answers in probe.jsonl). The rollouts' own mean score (`score`)
moves with the prompts each iteration draws, so it cannot show progress on a short run.

Per prompt set ('harmless' for red-team rows, 'helpful' for helpfulness rows) every iteration
also logs `score_<axis>`, `reward_total_<axis>`, `kl_<axis>` and `rows_<axis>`.

Outputs under WORKDIR/rl_train/: checkpoints/, metrics.jsonl and tb/ (one record per
iteration, plus record 0 for the probe of the starting policy), samples.jsonl (a sample table
every `sample_every` iterations, also printed), probe.jsonl, summary.json and export_hf/ (the
final policy).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from cai_jax import parallel
from cai_jax.rl import rollout as ro
from cai_jax.rl.ppo_trainer import GuardStop  # noqa: F401  (the job's guard stop, re-exported)
from cai_jax.rl.ppo_trainer import PPOTrainer, Prompts, initial_host_state, make_programs
from cai_jax.checkpoints import hf, loader, orbax_io
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import policy_layout
from cai_jax.data import sources
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.jobs.common import (check_sampling_dtype, conversation_format, policy_checkpoint,
                               weights_options)
from cai_jax.metrics import read_metrics
from cai_jax.model import heads
from cai_jax.sampling.sampler import Sampler
from cai_jax.sampling.strategies import Sampling
from cai_jax.train import engine, optim, runner
from cai_jax.train import pm as pm_lib
from cai_jax.train.checkpointing import TrainCheckpoints

PM_EXPORT = os.path.join("pm_train", "pm")
REWARDS = ("pm", "target_token")
VALUE_INITS = ("pm", "policy")
FROZEN_DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------------------------
# Configuration and inputs, checked before anything is computed


def check_config(c, mesh) -> None:
  for field in ("iterations", "batch_size", "minibatch_size", "micro_batches", "ppo_epochs",
                "max_prompt_tokens", "max_new_tokens", "sampler_batch", "chunk_size",
                "min_length", "loss_chunk_tokens", "num_samples"):
    if c[field] <= 0:
      raise ConfigError(f"rl_train.{field} must be > 0, got {c[field]}")
  for field in ("checkpoint_every", "sample_every", "kl_ceiling", "min_response_tokens",
                "collapse_patience", "probe_count", "probe_every"):
    if c[field] < 0:
      raise ConfigError(f"rl_train.{field} must be >= 0, got {c[field]}")
  if c.batch_size % c.minibatch_size:
    raise ConfigError(f"rl_train.batch_size={c.batch_size} is not divisible by "
                      f"minibatch_size={c.minibatch_size}")
  if c.minibatch_size % c.micro_batches:
    raise ConfigError(f"rl_train.minibatch_size={c.minibatch_size} is not divisible by "
                      f"micro_batches={c.micro_batches}")
  if c.reward not in REWARDS:
    raise ConfigError(f"rl_train.reward must be one of {REWARDS}, got {c.reward!r}")
  if c.value_init not in VALUE_INITS:
    raise ConfigError(f"rl_train.value_init must be one of {VALUE_INITS}, got {c.value_init!r}")
  check_sampling_dtype("rl_train.sampler_param_dtype", c.sampler_param_dtype)
  if c.frozen_dtype not in FROZEN_DTYPES:
    raise ConfigError(f"rl_train.frozen_dtype must be one of {FROZEN_DTYPES}, got "
                      f"{c.frozen_dtype!r}")
  if c.kl_estimator not in ("k1", "k2", "k3"):
    raise ConfigError(f"rl_train.kl_estimator must be 'k1', 'k2' or 'k3', got {c.kl_estimator!r}")
  if c.long_prompts not in ("error", "skip"):
    raise ConfigError(f"rl_train.long_prompts must be 'error' or 'skip', got {c.long_prompts!r}")
  if c.kl_coef < 0:
    raise ConfigError(f"rl_train.kl_coef must be >= 0, got {c.kl_coef}")
  if c.adaptive_kl and (c.target_kl <= 0 or c.kl_horizon <= 0):
    raise ConfigError("rl_train.adaptive_kl needs target_kl > 0 and kl_horizon > 0")
  if not 0 <= c.gamma <= 1 or not 0 <= c.lam <= 1:
    raise ConfigError(f"rl_train.gamma and lam must be in [0, 1], got {c.gamma}, {c.lam}")
  if c.temperature <= 0:
    raise ConfigError(f"rl_train.temperature must be > 0, got {c.temperature} (PPO needs "
                      "samples from the policy, not greedy decoding)")
  if c.reward == "target_token" and c.target_token_id < 0:
    raise ConfigError("rl_train.reward='target_token' needs rl_train.target_token_id >= 0")
  if isinstance(c.stop, str) or any(not isinstance(s, str) or not s for s in c.stop):
    raise ConfigError(f"rl_train.stop must be a tuple of non-empty strings, got {c.stop!r}")
  parallel.check_batch(c.batch_size, mesh, "rl_train.batch_size")
  parallel.check_batch(c.minibatch_size // c.micro_batches, mesh,
                       "rl_train.minibatch_size / micro_batches")
  parallel.process_rows(c.batch_size)
  parallel.process_rows(c.minibatch_size)


def pm_folder(c, workdir: str) -> str | None:
  """The preference model's folder when one is needed (reward or value init), else None."""
  if c.reward != "pm" and c.value_init != "pm":
    return None
  path = os.path.expanduser(c.pm) if c.pm else os.path.join(workdir, PM_EXPORT)
  why = "rl_train.reward='pm'" if c.reward == "pm" else "rl_train.value_init='pm'"
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no preference model there ({why} needs one). Run pm_train "
                          "first or set --config.rl_train.pm=RUN/pm_train/pm"
                          + ("" if c.reward == "pm" else ", or use value_init='policy'"))
  heads.read_pm_meta(path)  # a folder without pm.json, or another format: CheckpointError
  return path


def read_model_config(folder: str):
  if orbax_io.is_orbax_folder(folder):
    return orbax_io.read_config(folder)
  path = os.path.join(folder, "config.json")
  try:
    with open(path) as f:
      return hf.config_from_hf(json.load(f), path)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read config ({e})") from e


# ---------------------------------------------------------------------------------------------
# The job


def make_optimizer(config, total_steps: int):
  """(the optimizer config with its schedule's length, the optimizer)."""
  return optim.for_steps(config.optim, total_steps)


def rl_prompts(c) -> tuple[list, set, int | None]:
  """(red-team then helpfulness prompt records, the red-team ids, helpfulness rows per batch:
  None = drawn from the union of the two sets, in proportion to their sizes). ConfigError for
  ids shared between the sets, or a fraction the batch cannot hold."""
  red = sources.load_prompt_set(c.prompts) if c.prompts else []
  helpful = sources.load_prompt_set(c.helpful_prompts) if c.helpful_prompts else []
  if not red and not helpful:
    raise ConfigError("rl_train: no prompts (rl_train.prompts and helpful_prompts are empty)")
  shared = {r.id for r in red} & {r.id for r in helpful}
  if shared:
    raise ConfigError(f"rl_train.prompts {c.prompts!r} and helpful_prompts {c.helpful_prompts!r} "
                      f"share {len(shared)} ids (e.g. {sorted(shared)[0]!r}); they must differ")
  f = float(c.helpful_fraction)
  rows = None
  if f >= 0:
    if f > 1:
      raise ConfigError(f"rl_train.helpful_fraction={f} must be in [0, 1] (or < 0: both sets "
                        "together, in proportion to their sizes)")
    rows = round(c.batch_size * f)
    if 0 < f < 1 and rows in (0, c.batch_size):
      raise ConfigError(f"rl_train.batch_size={c.batch_size} is too small for "
                        f"helpful_fraction={f} (it rounds to {rows} helpfulness rows)")
    if rows and not helpful or rows < c.batch_size and not red:
      raise ConfigError(f"rl_train.helpful_fraction={f} needs "
                        + ("helpfulness prompts (rl_train.helpful_prompts)" if rows and not helpful
                           else "red-team prompts (rl_train.prompts)"))
    if rows == 0:
      helpful = []
    if rows == c.batch_size:
      red = []
  return red + helpful, {r.id for r in red}, rows


def run(config, workdir: str) -> dict:
  c = config.rl_train
  m = config.model
  scan = weights_options(m)["scan_layers"]
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.make_mesh(dict(config.mesh))
  check_config(c, mesh)
  cache_dir = os.path.expanduser(m.cache_dir)

  # ---- inputs: everything that can be wrong is checked before any weights load
  policy_spec = policy_checkpoint(config, workdir)
  policy_folder = loader.resolve(policy_spec, cache_dir)
  tokenizer = loader.read_tokenizer(policy_folder)
  fmt = conversation_format(config, tokenizer)
  policy_model_cfg = read_model_config(policy_folder)
  policy_vocab = policy_model_cfg.vocab_size
  pm_path = pm_folder(c, workdir)
  pm_meta = {}
  if pm_path is not None:
    pm_meta = heads.read_pm_meta(pm_path).get("settings", {})
    pm_format = pm_meta.get("conversation_format", "hh")
    if pm_format != fmt.name:
      raise ConfigError(f"conversation.format={fmt.name!r} but the preference model {pm_path} "
                        f"was trained on {pm_format!r} sequences: it would score text laid out "
                        "unlike its training data. Use one format for pm_train and rl_train")
    pm_decoder = os.path.join(pm_path, "decoder")
    ro.check_same_tokenizer(tokenizer, loader.read_tokenizer(pm_decoder), policy_vocab=policy_vocab,
                            pm_vocab=read_model_config(pm_decoder).vocab_size, where=pm_path)
  if c.max_prompt_tokens + c.max_new_tokens > policy_model_cfg.max_seq_len:
    raise ConfigError(f"rl_train.max_prompt_tokens + max_new_tokens = "
                      f"{c.max_prompt_tokens + c.max_new_tokens} exceeds the model's "
                      f"max_seq_len={policy_model_cfg.max_seq_len}")
  if c.reward == "target_token" and c.target_token_id >= policy_vocab:
    raise ConfigError(f"rl_train.target_token_id={c.target_token_id} is outside the vocabulary "
                      f"(size {policy_vocab})")
  layout = policy_layout.from_config(config, fmt)
  records, red_ids, helpful_rows = rl_prompts(c)
  records, prompt_ids, skipped = ro.prompt_ids(records, tokenizer, c.max_prompt_tokens,
                                               skip_long=c.long_prompts == "skip", fmt=fmt,
                                               context=layout.text)
  n_red = sum(r.id in red_ids for r in records)  # kept red-team prompts (they come first)
  n_helpful = len(records) - n_red
  if helpful_rows is not None and ((helpful_rows and not n_helpful)
                                   or (helpful_rows < c.batch_size and not n_red)):
    raise ConfigError(f"rl_train.helpful_fraction={c.helpful_fraction} asks for "
                      f"{helpful_rows} helpfulness rows of {c.batch_size}, but {n_red} red-team "
                      f"and {n_helpful} helpfulness prompts are left")
  axis_of_row = np.asarray(["harmless"] * n_red + ["helpful"] * n_helpful)
  if skipped:
    print(f"rl_train: skipped {len(skipped)} prompts longer than max_prompt_tokens="
          f"{c.max_prompt_tokens}: {', '.join(skipped[:10])}" + (" ..." if len(skipped) > 10
                                                                  else ""), flush=True)
  n_start = len(tokenizer.start_ids)  # BOS, or nothing for tokenizers without one

  def pm_prompt_ids(recs, policy_ids):
    """The prompts as the PM reads them, without BOS: the prompt alone, as it was trained (the
    policy's prefix, when there is one, is not part of it)."""
    if layout.model_prefix and recs:
      policy_ids = tokenizer.encode_batch([fmt.context(r.prompt) for r in recs], add_bos=True)
    return [ids[n_start:] for ids in policy_ids]

  prompt_ids_no_bos = pm_prompt_ids(records, prompt_ids)
  probe_records, probe_ids = [], []
  if c.probe_count:
    probe_records = sources.load_prompt_set(c.probe_prompts)
    overlap = {r.id for r in probe_records} & {r.id for r in records}
    if overlap:
      raise ConfigError(f"rl_train.probe_prompts {c.probe_prompts!r} shares {len(overlap)} ids "
                        f"with rl_train.prompts {c.prompts!r} (e.g. {sorted(overlap)[0]}): the "
                        "probe must be prompts the policy is not trained on")
    probe_records, probe_ids, _ = ro.prompt_ids(probe_records, tokenizer, c.max_prompt_tokens,
                                                skip_long=True, fmt=fmt, context=layout.text)
    if len(probe_records) < c.probe_count:
      raise ConfigError(f"rl_train.probe_prompts {c.probe_prompts!r} has {len(probe_records)} "
                        f"prompts within max_prompt_tokens, fewer than probe_count="
                        f"{c.probe_count}")
    probe_records, probe_ids = probe_records[:c.probe_count], probe_ids[:c.probe_count]
  probe_pm_ids = pm_prompt_ids(probe_records, probe_ids)
  strategy = Sampling(temperature=float(c.temperature), top_k=int(c.top_k), top_p=float(c.top_p))
  if strategy != Sampling():
    print(f"warning: rollouts sample from a modified distribution ({strategy}); the KL "
          "estimate and the policy gradient assume samples from the raw policy", flush=True)

  out_dir = os.path.join(workdir, "rl_train")
  ckpts = TrainCheckpoints(os.path.join(out_dir, "checkpoints"), save_every=c.checkpoint_every,
                           keep=c.keep_checkpoints, async_save=c.async_checkpoints)
  resuming = ckpts.latest_step() is not None

  # ---- models (configs from the folders: a resumed run reads no trainable weights)
  remat = c.remat or False
  policy_cfg = policy_model_cfg.replace(param_dtype=m.param_dtype, dtype=m.dtype, remat=remat,
                                        scan_layers=scan)
  value_cfg = (read_model_config(os.path.join(pm_path, "decoder")) if c.value_init == "pm"
               else policy_model_cfg).replace(param_dtype=m.param_dtype, dtype=m.dtype,
                                              remat=remat, scan_layers=scan)
  decoder_shardings = lambda cfg: engine.model_shardings(cfg, mesh)  # noqa: E731
  pm_shardings = lambda cfg: pm_lib.param_shardings(cfg, mesh)  # noqa: E731

  steps_per_iteration = c.ppo_epochs * (c.batch_size // c.minibatch_size)
  opt_cfg, optimizer = make_optimizer(config, c.iterations * steps_per_iteration)
  shardings, abstract = engine.state_shardings_for(ro.boxed_trainable(policy_cfg, value_cfg),
                                                   mesh, optimizer)
  meta = {"model_config": policy_cfg.to_dict(), "value_config": value_cfg.to_dict(),
          "job": "rl_train", "policy": policy_spec, "pm": pm_path or "", "reward": c.reward}

  order = ro.PromptMix(n_red, n_helpful, config.seed, helpful_rows)
  host = initial_host_state(c.kl_coef, order)
  if resuming:
    state, host, step = ckpts.restore(abstract, meta)
    order.restore(host["prompts"])
    print(f"rl_train: resuming after iteration {host['iteration']} (checkpoint {step}, kl_coef "
          f"{host['kl_coef']:.4g}, prompt epoch {host['prompts']['epoch']} index "
          f"{host['prompts']['index']})", flush=True)
  else:
    load = lambda dtype: loader.load(  # noqa: E731
        policy_spec, cache_dir=cache_dir, shardings_for=decoder_shardings,
        **weights_options(m, param_dtype=dtype)).params
    if c.value_init == "pm":
      value_params = heads.load_pm(pm_path, shardings_for=pm_shardings,
                                   **weights_options(m)).params
    else:  # the policy's decoder (a copy of its own) and a head that starts at 0
      value_params = {"decoder": load(m.param_dtype), "head": parallel.shard_host_tree(
          ro.zero_head(value_cfg), pm_shardings(value_cfg)["head"])}
    state = engine.new_state({"policy": load(m.param_dtype), "value": value_params}, optimizer,
                             jax.random.PRNGKey(config.seed), shardings)
    del value_params

  # The frozen models: read again, so that their buffers are never the donated state's.
  ref_cfg = policy_cfg.replace(param_dtype=c.frozen_dtype, remat=False)
  ref_params = loader.load(policy_spec, cache_dir=cache_dir, shardings_for=decoder_shardings,
                           **weights_options(m, param_dtype=c.frozen_dtype)).params
  pm_model = None
  if c.reward == "pm":
    pm_model = heads.load_pm(pm_path, shardings_for=pm_shardings,
                             **weights_options(m, param_dtype=c.frozen_dtype))

  # ---- the trainer on the engine's loop
  programs = make_programs(c, policy_cfg, ref_cfg, value_cfg,
                           pm_model.config if pm_model is not None else None, optimizer,
                           opt_cfg, mesh, shardings)
  per_shard = parallel.batch_size_per_shard(mesh)
  sampler = Sampler(policy_cfg.replace(remat=False), state.params["policy"], tokenizer,
                    max_prompt_length=c.max_prompt_tokens,
                    max_batch=-(-c.sampler_batch // per_shard) * per_shard,
                    chunk_size=c.chunk_size, mesh=mesh, eos_ids=fmt.stop_ids,
                    param_dtype=c.sampler_param_dtype or None)
  start_iteration = int(host["iteration"])
  trainer = PPOTrainer(
      c, seed=config.seed, mesh=mesh, tokenizer=tokenizer, fmt=fmt,
      prompts=Prompts(records=records, ids=prompt_ids, pm_ids=prompt_ids_no_bos,
                      axis_of_row=axis_of_row, probe_records=probe_records,
                      probe_pm_ids=probe_pm_ids, text=layout.text),
      order=order, host=host, policy_cfg=policy_cfg, ref_params=ref_params, pm_model=pm_model,
      pm_meta=pm_meta, programs=programs, strategy=strategy, sampler=sampler, out_dir=out_dir,
      ckpts=ckpts, start_iteration=start_iteration)
  state, logged, _ = runner.run_loop(
      name="rl_train", out_dir=out_dir, state=state, mesh=mesh, steps=c.iterations,
      ckpts=ckpts, meta=meta, model_config=policy_cfg, stepper=trainer.stepper(),
      start_step=start_iteration, show_progress=c.progress, postfix=trainer.postfix, unit="it",
      evaluate=(lambda step, st: trainer.probe(0, st.params["policy"])) if c.probe_count
      else None, evaluate_at_start=True)

  metrics_path = os.path.join(out_dir, "metrics.jsonl")
  probes = ([r for r in read_metrics(metrics_path) if "probe_score" in r]
            if os.path.exists(metrics_path) else [])
  summary = {"iterations": c.iterations, "start_iteration": start_iteration,
             "kl_estimator_in_reward": c.kl_estimator,
             "probe": {str(r["step"]): r["probe_score"] for r in probes},
             "prompts": len(records), "skipped_prompts": skipped, "reward": c.reward,
             "final": logged, "kl_coef": trainer.host["kl_coef"], "checkpoints": ckpts.directory}
  if c.export_hf:
    export = runner.export_hf(state.params["policy"], out_dir, policy_cfg, tokenizer)
    if export:
      summary["export_hf"] = export
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    if logged:
      print(f"rl_train: {c.iterations} iterations, score {logged['score']:.4f}, kl "
            f"{logged['kl']:.4f}, kl_coef {trainer.host['kl_coef']:.4g}", flush=True)
  return summary
