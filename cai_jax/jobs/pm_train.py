"""Job `pm_train`: a preference model (decoder + scalar head) trained with the soft-label
Bradley-Terry loss through the sharded training engine.

Data (see `cai_jax.data.preferences`): AI-labelled pairs (the `feedback` job's labels.jsonl,
p = p_first_better) mixed with human comparisons (HH-RLHF chosen/rejected, p = 1 for chosen,
side drawn per pair from the seed) at a fixed number of rows per batch
(`pm_train.human_fraction`).

Initialisation: `config.model.checkpoint` is the decoder (any checkpoint `loader.load` reads),
its parameters placed straight into their shards; the head starts at zero by default
(`head_init_scale=0`), so every reward gap is 0 and the first loss is exactly log 2, the loss
of "no preference". A random head (scale 1: std 1/sqrt(D + 1)) reads the final-normed hidden
state, whose norm in the default 270M model is large enough that the untrained PM already has gaps
of a few logits: against labels near 0.5 its loss was 1.29-1.58 before any update, per-batch losses
swung with the pairs drawn (the old quickstart's 1.05 -> 4.66), and 4 steps left the loss on the
training pairs where it started (docs/stages.md, "Preference model"). A saved preference model (a
folder with pm.json) is loaded whole, head included, to continue training it.

Axes: AI labels carry the axis they were judged for (`feedback`: 'harmless' for red-team pairs,
'helpful' for helpfulness pairs). With several axes each is its own source with its own rows in
every batch (`preferences.split_ai_rows`: `axis_fractions` weights, or in proportion to their
counts), and the held-out pairs are evaluated per axis (`eval_ai_<axis>_*`) and together
(`eval_ai_*`); at the end the final PM's accuracy and calibration (ECE, reliability diagram
pm_calibration_<set>.png) on every held-out set go to summary.json's `calibration`.

Held-out pairs: `heldout_fraction` of the AI-labelled pairs (by a hash of the pair id,
`data.holdout`) are kept out of training and evaluated as `eval_ai_*` when no separate
`eval_ai_labels` file is given; the training pairs are evaluated too (`eval_train_*`) before the
first step and at the end. Every held-out set is evaluated before the first step (step 0), every
`eval_every` steps and at the end, so the report shows where the loss started.

Outputs under WORKDIR/pm_train/: checkpoints/ (orbax, every `checkpoint_every` steps and at the
end; a rerun resumes from the latest, data position included), metrics.jsonl and tb/ (loss,
accuracy, |sigmoid(gap) - p|, lr, grad norm, tokens/s, MFU, memory; held-out loss and accuracy
every `eval_every` steps), summary.json, and pm/ (the exported preference model, read by
`heads.load_pm` and the `eval` job).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from cai_jax import parallel
from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.data import holdout
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.jobs.common import conversation_format, weights_options
from cai_jax.model import heads
from cai_jax.train import engine, optim, pm, runner
from cai_jax.train.checkpointing import TrainCheckpoints


def check_config(c, mesh) -> None:
  runner.check_batching(c, mesh, "pm_train")
  if c.head_lr_scale <= 0:
    raise ConfigError(f"pm_train.head_lr_scale must be > 0, got {c.head_lr_scale}")
  if not 0.0 <= c.heldout_fraction < 1.0:
    raise ConfigError(f"pm_train.heldout_fraction must be in [0, 1), got {c.heldout_fraction}")


def read_sources(c, seed: int) -> dict[str, list[prefs.Preference]]:
  """Every configured file, read and validated (DataError file:line) before the model loads."""
  out = {"train": {prefs.AI: [], prefs.HUMAN: []}, "eval": {}}
  if c.ai_labels:
    out["train"][prefs.AI] = prefs.read_ai_labels(c.ai_labels)
  if c.human_comparisons:
    out["train"][prefs.HUMAN] = prefs.read_human_comparisons(c.human_comparisons, seed)
  if c.eval_ai_labels:
    out["eval"]["ai"] = prefs.read_ai_labels(c.eval_ai_labels)
  elif c.heldout_fraction > 0 and out["train"][prefs.AI]:
    out["train"][prefs.AI], out["eval"]["ai"] = holdout.split(
        out["train"][prefs.AI], lambda x: x.id, c.heldout_fraction, f"pm_train:{seed}")
  if c.eval_comparisons:
    out["eval"]["human"] = prefs.read_human_comparisons(c.eval_comparisons, seed)
  return out


def label_entropy(examples) -> float:
  """Mean entropy of the labels (nats): the lowest soft-BT loss any PM can reach on them (log 2
  for labels of 0.5, 0 for hard labels)."""
  p = np.clip(np.asarray([e.p for e in examples], np.float64), 1e-12, 1 - 1e-12)
  return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))) if len(p) else math.nan


def load_initial(config, mesh, head_scale: float):
  """(decoder config, tokenizer, params {"decoder", "head"} placed in their shards): a saved
  preference model whole, or a decoder checkpoint with a fresh head drawn from seed + 1."""
  m = config.model
  shardings = {}

  def for_config(cfg):
    shardings.update(pm.param_shardings(cfg, mesh))
    return shardings

  path = os.path.expanduser(m.checkpoint)
  if os.path.isdir(path) and heads.is_pm_folder(path):
    loaded = heads.load_pm(path, shardings_for=for_config, **weights_options(m))
    return loaded.config, loaded.tokenizer, loaded.params
  model = loader.load(m.checkpoint, cache_dir=os.path.expanduser(m.cache_dir),
                      shardings_for=lambda cfg: for_config(cfg)["decoder"], **weights_options(m))
  head = heads.init_head(model.config, jax.random.PRNGKey(config.seed + 1), head_scale)
  head = parallel.shard_host_tree(head, shardings["head"])
  return model.config, model.tokenizer, {"decoder": model.params, "head": head}


def make_optimizer(config, steps: int):
  """(the optimizer config with its schedule's length, the optimizer: the head's learning
  rate scaled by pm_train.head_lr_scale)."""
  return optim.for_steps(config.optim, steps,
                         subtree_lr_scale={"head": config.pm_train.head_lr_scale})


def make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings):
  """(the compiled train step, the compiled eval step): the programs this job runs, also
  compiled for a TPU topology by the compile_check job."""
  return engine.compile_train_and_eval(pm.make_pm_loss(model_cfg), optimizer,
                                      shardings, mesh, micro_batches=c.micro_batches,
                                      learning_rate_fn=optim.schedule(opt_cfg))


def held_out_calibration(sets: dict, loaded, mesh, c, out_dir: str) -> dict:
  """Per held-out set (each AI axis, human comparisons): the final PM's accuracy and
  calibration. q = sigmoid(r_a - r_b) against the label p, each pair counted from both sides
  ((q, p) and (1 - q, 1 - p)), `calibration.reliability` with 10 bins; accuracy over pairs with
  a decisive label (p != 0.5). A reliability diagram per set, pm_calibration_<set>.png."""
  from cai_jax.eval import calibration, plots
  from cai_jax.eval.pm_eval import PMScorer
  scorer = PMScorer(loaded, mesh, batch_size=c.eval_batch_size, max_length=c.max_length,
                    min_length=c.min_length, append_eos=c.append_eos)
  out = {}
  for name, pairs in sorted(sets.items()):
    rewards, _ = scorer.score(pairs)
    q = 1.0 / (1.0 + np.exp(-(rewards[:, 0] - rewards[:, 1])))
    p = np.asarray([x.p for x in pairs], np.float64)
    rel = calibration.reliability(np.concatenate([q, 1 - q]), np.concatenate([p, 1 - p]))
    decisive = p != 0.5
    accuracy = float(np.mean((q[decisive] > 0.5) == (p[decisive] > 0.5))) if decisive.any() \
        else None
    out[name] = {"n": len(pairs), "accuracy": accuracy, "ece": rel["ece"],
                 "mean_abs_error": float(np.mean(np.abs(q - p))), "calibration": rel}
    if jax.process_index() == 0:
      out[name]["reliability_png"] = plots.reliability_diagram(
          rel, os.path.join(out_dir, f"pm_calibration_{name}.png"),
          title=f"preference model on held-out {name} pairs",
          xlabel="PM predicted P(first better)", ylabel="mean label P(first better)")
  return out


def run(config, workdir: str) -> dict:
  c = config.pm_train
  if not c.ai_labels and not c.human_comparisons:
    raise ConfigError("no training data: set --config.pm_train.ai_labels=LABELS.jsonl and/or "
                      "--config.pm_train.human_comparisons=HH.jsonl(.gz)")
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.make_mesh(dict(config.mesh))
  check_config(c, mesh)
  data = read_sources(c, config.seed)
  train_sets = data["train"]
  rows_per = prefs.mix_rows(c.batch_size, len(train_sets[prefs.AI]),
                            len(train_sets[prefs.HUMAN]), c.human_fraction)
  # AI labels of several axes (harmless, helpful, ...): one source each, rows split by
  # axis_fractions; their held-out pairs are evaluated per axis too.
  ai_sets = prefs.ai_sources(train_sets[prefs.AI])
  rows_per = {**prefs.split_ai_rows(rows_per[prefs.AI], {s: len(x) for s, x in ai_sets.items()},
                                    c.axis_fractions),
              prefs.HUMAN: rows_per[prefs.HUMAN]}
  train_sets = {**ai_sets, prefs.HUMAN: train_sets[prefs.HUMAN]}
  data["eval"].update(prefs.ai_sources(data["eval"].pop("ai", [])))
  out_dir = os.path.join(workdir, "pm_train")
  ckpts = TrainCheckpoints(os.path.join(out_dir, "checkpoints"), save_every=c.checkpoint_every,
                           keep=c.keep_checkpoints, async_save=c.async_checkpoints)
  resuming = ckpts.latest_step() is not None

  base_cfg, tokenizer, params = load_initial(config, mesh, c.head_init_scale)
  model_cfg = base_cfg.replace(remat=c.remat or False)
  fmt = conversation_format(config, tokenizer)
  tok = lambda xs: prefs.tokenize(xs, tokenizer, max_length=c.max_length,  # noqa: E731
                                  append_eos=c.append_eos, fmt=fmt)
  train = {s: tok(xs) for s, xs in train_sets.items() if rows_per.get(s)}
  held_out = {s: tok(xs) for s, xs in data["eval"].items() if xs}
  sizes = {s: len(xs) for s, xs in train.items()}
  steps = c.steps or prefs.steps_for_epochs(sizes, rows_per, c.epochs)
  opt_cfg, optimizer = make_optimizer(config, steps)
  shardings, abstract = pm.state_shardings(model_cfg, mesh, optimizer)
  meta = {"model_config": model_cfg.to_dict(), "job": "pm_train",
          "ai_labels": os.path.abspath(c.ai_labels) if c.ai_labels else "",
          "human_comparisons": os.path.abspath(c.human_comparisons) if c.human_comparisons else "",
          "rows_per_batch": rows_per}

  batches = prefs.PreferenceBatches(train, rows_per, seed=config.seed, max_length=c.max_length,
                                    min_length=c.min_length,
                                    rows=parallel.process_rows(c.batch_size),
                                    pad_id=tokenizer.pad_id)
  if resuming:
    del params  # the checkpoint holds newer parameters
  state = runner.resume_or_start(
      "pm_train", ckpts, abstract, meta, batches,
      lambda: engine.new_state(params, optimizer, jax.random.PRNGKey(config.seed), shardings))

  step_fn, eval_fn = make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings)
  truncated = {s: sum(e.truncated for e in xs) for s, xs in train.items()}
  for s, n in truncated.items():
    if n:
      print(f"{n} of {sizes[s]} {s} pairs were longer than max_length={c.max_length} and lost "
            "tokens from the left (prompt first)", flush=True)

  def evaluate(step, st):
    result = {}
    sets = dict(held_out)
    if step in (0, steps):  # the training pairs themselves, before and after
      sets.update({f"train_{s}": xs for s, xs in train.items()})
    totals = {}
    for name, examples in sets.items():
      totals[name] = runner.eval_sums(eval_fn, st.params, (
          local for _, local in prefs.eval_batches(
              examples, c.eval_batch_size, max_length=c.max_length, min_length=c.min_length,
              rows=parallel.process_rows(c.eval_batch_size), pad_id=tokenizer.pad_id)), mesh)
    for group in ("", "train_"):  # several axes: their sums also give the AI set as a whole
      parts = [t for n, t in totals.items() if n.startswith(f"{group}{prefs.AI}_")]
      if len(parts) > 1:
        totals[f"{group}{prefs.AI}"] = {k: sum(t[k] for t in parts) for k in parts[0]}
    for name, total in totals.items():
      result[f"eval_{name}_loss"] = total["loss_sum"] / max(total["weight"], 1e-9)
      result[f"eval_{name}_accuracy"] = total["sum_correct"] / max(total["sum_decisive"], 1e-9)
    return result

  state, logged, start_step = runner.run_loop(
      name="pm_train", out_dir=out_dir, state=state, step_fn=step_fn, local_batches=batches,
      mesh=mesh, steps=steps, ckpts=ckpts, meta=meta, model_config=model_cfg,
      peak_flops=c.peak_flops, lm_head=False, show_progress=c.progress,
      extra_metrics=lambda m: {
          "accuracy": m["correct"] / max(m["decisive"], 1e-9),
          "abs_prob_error": m["abs_prob_error"] / max(m["weight"], 1e-9),
          "truncated_pairs": float(sum(truncated.values()))},
      evaluate=evaluate if held_out else None, eval_every=c.eval_every, evaluate_at_start=True,
      evaluate_at_end=True)
  final_eval = {k: v for k, v in logged.items() if k.startswith("eval_")}
  summary = {"steps": steps, "start_step": start_step, "pairs": sizes,
             "held_out_pairs": {s: len(xs) for s, xs in held_out.items()},
             "label_entropy": {**{s: label_entropy(xs) for s, xs in held_out.items()},
                               **{f"train_{s}": label_entropy(xs) for s, xs in train.items()}},
             "initial_eval": runner.initial_metrics(out_dir),
             "rows_per_batch": rows_per, "truncated_pairs": truncated, "final": logged,
             "checkpoints": ckpts.directory}
  if c.export:
    params = runner.gather_params(state.params)
    if jax.process_index() == 0:
      export = os.path.join(out_dir, "pm")
      heads.save_pm(export, model_cfg.replace(remat=False), params, tokenizer,
                    {"append_eos": bool(c.append_eos), "max_length": int(c.max_length),
                     "conversation_format": fmt.name,
                     "steps": steps, "trained_from": config.model.checkpoint})
      summary["export"] = export
  if data["eval"]:
    summary["calibration"] = held_out_calibration(
        data["eval"], heads.LoadedPM(model_cfg.replace(remat=False), state.params, tokenizer,
                                     {"append_eos": bool(c.append_eos),
                                      "max_length": int(c.max_length),
                                      "conversation_format": fmt.name}, "pm_train"),
        mesh, c, out_dir)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    msg = (f"pm_train: {steps} steps, final loss {logged.get('loss', math.nan):.4f}, "
           f"accuracy {logged.get('accuracy', math.nan):.3f}")
    for k, v in final_eval.items():
      msg += f", {k} {v:.4f}"
    print(msg, flush=True)
  return summary

