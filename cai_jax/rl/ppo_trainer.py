"""PPO as a `Stepper` of the engine's loop: one loop step is one PPO iteration.

`prepare(state)` is the rollout: sample answers from the current policy, score them (old and
reference log-probs, values, entropy; the reward model), compute rewards and advantages, and
judge the policy that produced them (guards: non-finite values, KL ceiling, collapse). It also
advances the host state that the rollout decides: prompt order, reward statistics, the KL
coefficient for the next iteration, the collapse counter. `update(state, batch)` runs
`ppo_epochs` passes over shuffled minibatches, one compiled engine step each, checks the result,
and returns the iteration's metrics (probe included when scheduled). The engine's loop owns
everything around them: checkpoint scheduling (a scheduled checkpoint waits for the next
rollout's verdict, `Stepper.judges_state`), preemption, finiteness, metrics and progress.

What a checkpoint stores besides the TrainState is `PPOTrainer.host` (iteration, kl_coef,
collapse_count, reward statistics, prompt position), so a resumed run continues bitwise: the
rollout key derives from (seed, iteration), the minibatch order from (seed, iteration, epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
import time
from typing import Callable, Sequence

import jax
import numpy as np

from cai_jax import parallel
from cai_jax.rl import ppo
from cai_jax.rl import rollout as ro
from cai_jax.sampling.sampler import FINISH_LENGTH, Sampler
from cai_jax.sampling.strategies import Greedy
from cai_jax.train import engine, optim
from cai_jax.train.runner import drop_metrics_after


class GuardStop(engine.NonFiniteLoss):
  """A guard stopped the run (KL ceiling, collapse). A NonFiniteLoss so that the CLI prints it
  without a traceback and exits with status 3, as for a non-finite loss."""


def make_programs(c, policy_cfg, ref_cfg, value_cfg, pm_cfg, optimizer, opt_cfg, mesh,
                  shardings):
  """(scoring pass, PM pass or None without a PM, PPO train step), jitted as the trainer runs
  them; also compiled for a TPU topology by the compile_check job. The rollout's sampler is
  `Sampler`'s own."""
  replicated = parallel.replicated(mesh)
  score_fn = parallel.run_under(mesh, jax.jit(
      ro.make_score_fn(policy_cfg.replace(remat=False), ref_cfg,
                       value_cfg.replace(remat=False), chunk_tokens=c.loss_chunk_tokens),
      out_shardings=replicated))
  pm_fn = (parallel.run_under(mesh, jax.jit(ro.make_pm_fn(pm_cfg), out_shardings=replicated))
           if pm_cfg is not None else None)
  loss_fn = ro.make_ppo_loss(policy_cfg, value_cfg, clip_eps=c.clip_eps,
                             clip_eps_value=c.clip_eps_value, vf_coef=c.vf_coef,
                             ent_coef=c.ent_coef, chunk_tokens=c.loss_chunk_tokens)
  step_fn = engine.compile_step(
      engine.make_train_step(loss_fn, optimizer, micro_batches=c.micro_batches, mesh=mesh,
                             learning_rate_fn=optim.schedule(opt_cfg)),
      shardings, mesh)
  return score_fn, pm_fn, step_fn


# ---------------------------------------------------------------------------------------------
# Small host helpers


def _host(tree):
  """Host copies of (replicated) device outputs."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _local_rows(batch: dict, n: int) -> dict:
  rows = parallel.process_rows(n)
  return {k: v[rows] for k, v in batch.items()}


def _last_human_turn(prompt: str) -> str:
  cut = prompt.rfind("\n\nHuman:")
  text = prompt[cut + len("\n\nHuman:"):] if cut >= 0 else prompt
  return text.replace("\n\nAssistant:", "").strip()


def _clip(text: str, n: int) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[:n - 3] + "..."


def sample_table(iteration: int, rows: list[dict]) -> str:
  lines = [f"--- iteration {iteration}: samples (prompt | response | score -> reward) ---"]
  for r in rows:
    lines.append(f"* {_clip(_last_human_turn(r['prompt']), 60)}")
    lines.append(textwrap.indent(f"-> {_clip(r['response'], 100)!r}", "  "))
    lines.append(f"   score {r['score']:+.3f}  reward {r['reward']:+.3f}  "
                 f"[{r['finish_reason']}, {r['num_tokens']} tokens]")
  return "\n".join(lines)


def initial_host_state(kl_coef: float, order: ro.PromptMix) -> dict:
  """The host state of a run before its first iteration (JSON, saved with every checkpoint)."""
  return {"iteration": 0, "kl_coef": float(kl_coef), "collapse_count": 0,
          "norm": ro.RunningMoments().to_dict(), "prompts": order.position()}


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclasses.dataclass
class Prompts:
  """What the rollouts and the probe read: the records, their token ids as the policy reads them
  (BOS and the policy's prefix included) and as the PM reads them (no BOS, no prefix)."""
  records: list
  ids: list
  pm_ids: list
  axis_of_row: np.ndarray            # 'harmless' / 'helpful' per record
  probe_records: list
  probe_pm_ids: list
  text: Callable[[str], str]         # prompt -> what the policy reads


class PPOTrainer:
  """Owns one PPO run's rollout, scoring and update; `stepper()` hands them to the engine.

  `c` is the `rl_train` config section; `host` the host state (resumed from a checkpoint or
  `initial_host_state`); `ckpts` is read only for stop messages (the loop saves)."""

  def __init__(self, c, *, seed: int, mesh, tokenizer, fmt, prompts: Prompts, order,
               host: dict, policy_cfg, ref_params, pm_model, pm_meta: dict, programs,
               strategy, sampler: Sampler, out_dir: str, ckpts, start_iteration: int):
    self.c, self.seed, self.mesh, self.tokenizer, self.fmt = c, seed, mesh, tokenizer, fmt
    self.prompts, self.order, self.host = prompts, order, host
    self.policy_cfg, self.ref_params, self.pm_model = policy_cfg, ref_params, pm_model
    self.score_fn, self.pm_fn, self.step_fn = programs
    self.finite_fn = parallel.run_under(mesh, jax.jit(
        ro.all_finite, out_shardings=parallel.replicated(mesh)))
    self.strategy, self.sampler, self.out_dir, self.ckpts = strategy, sampler, out_dir, ckpts
    self.start_iteration = start_iteration
    self.norm = ro.RunningMoments.from_dict(host["norm"])
    self.controller = (ppo.AdaptiveKLController(float(c.target_kl), float(c.kl_horizon))
                       if c.adaptive_kl else ppo.FixedKLController())
    self.pm_append_eos = bool(pm_meta.get("append_eos", True))
    self.pm_max_length = int(pm_meta.get("max_length", 0)
                             or c.max_prompt_tokens + c.max_new_tokens + 2)
    self.pm_rows_multiple = math.lcm(parallel.batch_size_per_shard(mesh), jax.process_count())
    self.main_process = jax.process_index() == 0
    if self.main_process:  # rows of iterations a crash lost are redone: written once
      for name in ("probe.jsonl", "samples.jsonl"):
        drop_metrics_after(os.path.join(out_dir, name), start_iteration, key="iteration")

  # ---- the engine's view

  def stepper(self) -> engine.Stepper:
    return engine.Stepper(prepare=self.rollout, update=self.update, judges_state=True)

  @staticmethod
  def postfix(metrics) -> dict:
    return {"reward": f"{metrics['score']:.3f}", "kl": f"{metrics['kl']:.3f}"}

  # ---- rewards and the probe

  def raw_scores(self, prompt_ids_no_bos: Sequence, out) -> tuple[np.ndarray, int]:
    """(the reward model's raw score of each answer, rows cut to the PM's max_length)."""
    c = self.c
    if c.reward != "pm":
      return ro.target_token_scores(out.tokens, c.target_token_id), 0
    pm_in, cut = ro.pm_batch(prompt_ids_no_bos, out.texts, self.tokenizer,
                             append_eos=self.pm_append_eos, max_length=self.pm_max_length,
                             min_length=c.min_length, fmt=self.fmt)
    rows = len(prompt_ids_no_bos)
    # The probe's rows need not divide the data axes or the processes: pad with copies of the
    # last row, scored and dropped (the rollout batch is checked to divide them).
    pm_in = parallel.pad_rows(pm_in, self.pm_rows_multiple)
    scores = _host(self.pm_fn(self.pm_model.params, parallel.global_batch(
        _local_rows(pm_in, len(pm_in["tokens"])), self.mesh)))
    return np.asarray(scores, np.float32)[:rows], cut

  def probe(self, iteration: int, policy_params) -> dict:
    """Greedy answers of the policy to the fixed probe prompts, scored by the reward model: the
    objective on the same prompts every time (rollouts sample new prompts, so their mean score
    mixes the policy's progress with the prompts' difficulty)."""
    p = self.prompts
    self.sampler.params = policy_params
    out = self.sampler.generate([p.text(r.prompt) for r in p.probe_records],
                                max_new_tokens=self.c.max_new_tokens, strategy=Greedy(),
                                stop=tuple(self.c.stop))
    scores, _ = self.raw_scores(p.probe_pm_ids, out)
    if self.main_process:
      with open(os.path.join(self.out_dir, "probe.jsonl"), "a", encoding="utf-8") as f:
        for r, text, score, n in zip(p.probe_records, out.texts, scores, out.num_tokens):
          f.write(json.dumps({"iteration": iteration, "id": r.id, "answer": text,
                              "score": float(score), "num_tokens": int(n)},
                             ensure_ascii=False) + "\n")
    return {"probe_score": float(scores.mean()), "probe_score_std": float(scores.std()),
            "probe_answer_tokens": float(np.mean(out.num_tokens))}

  def stop_message(self, iteration: int, what: str) -> str:
    latest = self.ckpts.latest_step()
    kept = (f"the latest checkpoint (iteration {latest}) is the last good one" if latest
            is not None else "no checkpoint was written")
    return f"iteration {iteration}: {what}; stopped without saving this state; {kept}"

  # ---- prepare: the rollout, which judges the current policy

  def rollout(self, state: engine.TrainState) -> tuple[dict, dict]:
    c, p, host = self.c, self.prompts, self.host
    it = int(host["iteration"]) + 1
    t0 = time.perf_counter()
    idx = self.order.take(c.batch_size)
    self.sampler.params = state.params["policy"]
    out = self.sampler.generate([p.text(p.records[i].prompt) for i in idx],
                                max_new_tokens=c.max_new_tokens, strategy=self.strategy,
                                key=jax.random.fold_in(jax.random.PRNGKey(self.seed), it),
                                stop=tuple(c.stop))
    t1 = time.perf_counter()

    grid = ro.grid_batch([p.ids[i] for i in idx], out.tokens, out.logprobs,
                         pad_id=self.tokenizer.pad_id, min_length=c.min_length,
                         window=c.max_new_tokens)
    model_in = {k: grid[k] for k in ("tokens", "valid", "targets", "window")}
    scored = _host(self.score_fn(state.params["policy"], self.ref_params, state.params["value"],
                                 parallel.global_batch(_local_rows(model_in, c.batch_size),
                                                       self.mesh)))
    raw, pm_truncated = self.raw_scores([p.pm_ids[i] for i in idx], out)
    finished = np.asarray([r != FINISH_LENGTH for r in out.finish_reasons])
    if c.normalize_reward:
      self.norm.update(raw)
      normed = self.norm.normalize(raw)
    else:
      normed = raw
    score = np.asarray(ppo.missing_end_penalty(normed, finished, c.missing_end_penalty))
    kl_coef = float(host["kl_coef"])
    adv = _host(ro.advantages(score, scored["logp"], scored["ref_logp"], scored["values"],
                              grid["mask"], grid["end_index"], kl_coef, c.gamma, c.lam,
                              estimator=c.kl_estimator))
    t2 = time.perf_counter()
    roll = self._rollout_metrics(out, grid, scored, adv, raw, score, finished, kl_coef, idx)
    roll.update(pm_truncated=float(pm_truncated), time_rollout_s=t1 - t0,
                time_scoring_s=t2 - t1)

    guard = ro.rollout_guards(
        {"scores": raw, "log-probs": scored["logp"], "reference log-probs": scored["ref_logp"],
         "values": scored["values"], "advantages": adv["advantages"],
         "returns": adv["returns"]},
        kl=roll["kl"], kl_ceiling=c.kl_ceiling, answer_tokens=roll["answer_tokens"],
        min_response_tokens=c.min_response_tokens,
        collapse_count=int(host["collapse_count"]), collapse_patience=c.collapse_patience)
    if guard.kind == "nonfinite":
      raise engine.NonFiniteLoss(self.stop_message(it, guard.message))
    if guard.kind is not None:
      raise GuardStop(self.stop_message(it, guard.message))

    new_coef = float(self.controller.update(kl_coef, roll["kl"], c.batch_size))
    roll["kl_coef_next"] = new_coef
    host.update({"iteration": it, "kl_coef": new_coef, "collapse_count": guard.collapse_count,
                 "norm": self.norm.to_dict(), "prompts": self.order.position()})
    train_rows = {"tokens": grid["tokens"], "valid": grid["valid"], "targets": grid["targets"],
                  "window": grid["window"],
                  "mask": grid["mask"], "old_logp": scored["logp"].astype(np.float32),
                  "old_values": scored["values"].astype(np.float32),
                  "advantages": adv["advantages"].astype(np.float32),
                  "returns": adv["returns"].astype(np.float32)}
    batch = {"iteration": it, "rows": train_rows, "metrics": roll,
             "samples": (idx, out, raw, adv["reward_seq"])}
    return batch, json.loads(json.dumps(host))  # the checkpoint's copy, after this iteration

  def _rollout_metrics(self, out, grid, scored, adv, raw, score, finished, kl_coef, idx
                       ) -> dict:
    c = self.c
    mask = grid["mask"]
    n_tok = float(mask.sum())
    ev = float(adv["explained_variance"])
    answer_tokens = np.asarray([len(x) for x in
                                self.tokenizer.encode_batch(out.texts, add_bos=False)])
    roll = {
        "score": float(raw.mean()), "score_std": float(raw.std()),
        "reward_raw": float(np.mean(np.asarray(ppo.missing_end_penalty(
            raw, finished, c.missing_end_penalty)))),
        "reward_norm": float(score.mean()),
        "reward_total": float(adv["reward_seq"].mean()),
        "kl": float(adv["kl_seq"].mean()), "kl_k1": float(adv["kl_k1_seq"].mean()),
        "kl_k3": float(adv["kl_k3_seq"].mean()), "kl_coef": kl_coef,
        "entropy": float((scored["entropy"] * mask).sum() / n_tok),
        "value_mean": float((scored["values"] * mask).sum() / n_tok),
        "return_mean": float((adv["returns"] * mask).sum() / n_tok),
        "response_length": float(grid["response_len"].mean()),
        "answer_tokens": float(answer_tokens.mean()),
        "missing_end_rate": float(1.0 - finished.mean()),
        "sampler_logprob_gap": float((np.abs(grid["sampler_logp"] - scored["logp"])
                                      * mask).sum() / n_tok),
    }
    if math.isfinite(ev):  # undefined (NaN) when every return is equal
      roll["explained_variance"] = ev
    axes = self.prompts.axis_of_row[idx]
    for axis in ("harmless", "helpful"):  # per prompt set, when the batch has any
      sel = axes == axis
      if sel.any():
        roll[f"score_{axis}"] = float(raw[sel].mean())
        roll[f"reward_total_{axis}"] = float(adv["reward_seq"][sel].mean())
        roll[f"kl_{axis}"] = float(adv["kl_seq"][sel].mean())
        roll[f"rows_{axis}"] = float(sel.sum())
    return roll

  # ---- update: PPO epochs over minibatches, each one engine step

  def update(self, state: engine.TrainState, batch: dict) -> tuple[engine.TrainState, dict]:
    c, it, rows = self.c, batch["iteration"], batch["rows"]
    t2 = time.perf_counter()
    step_metrics = []
    for epoch in range(c.ppo_epochs):
      perm = np.random.default_rng([self.seed, it, epoch]).permutation(c.batch_size)
      for s in range(0, c.batch_size, c.minibatch_size):
        mb = {k: v[perm[s:s + c.minibatch_size]] for k, v in rows.items()}
        state, metrics = self.step_fn(state, parallel.global_batch(
            _local_rows(mb, c.minibatch_size), self.mesh))
        step_metrics.append(metrics)
    step_metrics = [{k: float(np.asarray(v)) for k, v in jax.device_get(sm).items()}
                    for sm in step_metrics]
    params_ok = bool(np.asarray(jax.device_get(self.finite_fn(state.params))))
    t3 = time.perf_counter()
    for n, sm in enumerate(step_metrics):
      if not (math.isfinite(sm["loss"]) and math.isfinite(sm["grad_norm"])):
        raise engine.NonFiniteLoss(self.stop_message(
            it, f"update step {n + 1} of {len(step_metrics)}: loss {sm['loss']}, grad norm "
                f"{sm['grad_norm']} (not finite)"))
    if not params_ok:
      raise engine.NonFiniteLoss(self.stop_message(it, "non-finite parameters after the update"))

    tot = {k: sum(sm[k] for sm in step_metrics) for k in step_metrics[0]}
    w = max(tot["weight"], 1e-9)
    metrics = {**batch["metrics"],
               "policy_loss": tot["pg_loss"] / w, "value_loss": tot["vf_loss"] / w,
               "clipfrac": tot["clipfrac"] / w, "approx_kl": tot["approx_kl"] / w,
               "approx_kl_k3": tot["approx_kl_k3"] / w, "ratio": tot["ratio"] / w,
               "loss": tot["loss"] / len(step_metrics),
               "grad_norm": tot["grad_norm"] / len(step_metrics),
               "lr": step_metrics[-1].get("lr", float("nan")),
               "optimizer_steps": step_metrics[-1]["step"], "time_update_s": t3 - t2}
    if "entropy" in tot:
      metrics["entropy_update"] = tot["entropy"] / w
    if c.probe_count and (it == c.iterations or (c.probe_every and it % c.probe_every == 0)):
      metrics.update(self.probe(it, state.params["policy"]))
    if c.sample_every and (it % c.sample_every == 0 or it == self.start_iteration + 1):
      self._write_samples(it, *batch["samples"])
    return state, metrics

  def _write_samples(self, it: int, idx, out, raw, reward_seq) -> None:
    if not self.main_process:
      return
    p = self.prompts
    rows = [{"iteration": it, "id": p.records[i].id, "axis": str(p.axis_of_row[i]),
             "prompt": p.records[i].prompt, "response": out.texts[b], "score": float(raw[b]),
             "reward": float(reward_seq[b]), "finish_reason": out.finish_reasons[b],
             "num_tokens": int(out.num_tokens[b])}
            for b, i in enumerate(idx[:self.c.num_samples])]
    with open(os.path.join(self.out_dir, "samples.jsonl"), "a", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(("\n" if self.c.progress else "") + sample_table(it, rows), flush=True)
