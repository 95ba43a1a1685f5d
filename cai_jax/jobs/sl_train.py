"""Job `sl_train`: finetune a checkpoint on an SL jsonl through the sharded training engine.

Outputs under WORKDIR/sl_train/: checkpoints/ (orbax, every `checkpoint_every` steps and at the
end; a rerun resumes from the latest), metrics.jsonl and tb/ (loss, lr, grad norm, tokens/s,
MFU, memory, eval loss), summary.json, and export_hf/ (the finetuned model as an HF folder).
With `eval_data` the held-out loss is measured before the first step (step 0: the starting
model), every `eval_every` steps and at the end; summary.json has `initial_eval` and the final
one, the "before and after" of finetuning.
"""

from __future__ import annotations

import math
import os

import jax

from cai_jax import parallel
from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.data import sl
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.jobs.common import conversation_format, weights_options
from cai_jax.train import engine, lm, optim, runner
from cai_jax.train.checkpointing import TrainCheckpoints


def check_config(c, mesh) -> None:
  runner.check_batching(c, mesh, "sl_train", ("loss_chunk_tokens",))


def make_optimizer(config, steps: int):
  """(the optimizer config with its schedule's length, the optimizer)."""
  return optim.for_steps(config.optim, steps)


def make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings):
  """(the compiled train step, the compiled eval step): the programs this job runs, also
  compiled for a TPU topology by the compile_check job."""
  return engine.compile_train_and_eval(lm.make_lm_loss(model_cfg, chunk_tokens=c.loss_chunk_tokens), optimizer,
                                      shardings, mesh, micro_batches=c.micro_batches,
                                      learning_rate_fn=optim.schedule(opt_cfg))


def run(config, workdir: str) -> dict:
  c = config.sl_train
  if not c.data:
    raise ConfigError("no training data: set --config.sl_train.data=FILE.jsonl")
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.make_mesh(dict(config.mesh))
  check_config(c, mesh)
  out_dir = os.path.join(workdir, "sl_train")
  ckpts = TrainCheckpoints(os.path.join(out_dir, "checkpoints"), save_every=c.checkpoint_every,
                           keep=c.keep_checkpoints, async_save=c.async_checkpoints)
  resuming = ckpts.latest_step() is not None

  m = config.model
  model = loader.load(m.checkpoint, cache_dir=os.path.expanduser(m.cache_dir),
                      shardings_for=lambda cfg: engine.model_shardings(cfg, mesh),
                      **weights_options(m))
  model_cfg = model.config.replace(remat=c.remat or False)
  fmt = conversation_format(config, model.tokenizer)
  train = sl.read_sl_file(c.data, model.tokenizer, max_length=c.max_length,
                          append_eos=c.append_eos, fmt=fmt)
  held_out = (sl.read_sl_file(c.eval_data, model.tokenizer, max_length=c.max_length,
                              append_eos=c.append_eos, fmt=fmt) if c.eval_data else [])
  steps = c.steps or c.epochs * math.ceil(len(train) / c.batch_size)
  opt_cfg, optimizer = make_optimizer(config, steps)
  shardings, abstract = engine.state_shardings(model_cfg, mesh, optimizer)
  meta = {"model_config": model_cfg.to_dict(), "job": "sl_train", "data": os.path.abspath(c.data)}

  rows = parallel.process_rows(c.batch_size)
  batches = sl.BatchIterator(train, c.batch_size, seed=config.seed, max_length=c.max_length,
                             min_length=c.min_length, rows=rows)
  if resuming:
    del model.params  # the checkpoint holds newer parameters
  state = runner.resume_or_start(
      "sl_train", ckpts, abstract, meta, batches,
      lambda: engine.new_state(model.params, optimizer, jax.random.PRNGKey(config.seed), shardings))

  step_fn, eval_fn = make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings)
  truncated = sum(e.truncated for e in train)
  if truncated:
    print(f"{truncated} of {len(train)} training examples were longer than max_length="
          f"{c.max_length} and were truncated (prompt from the left first)", flush=True)

  def evaluate(step, st):
    if not held_out:
      return {}
    total = runner.eval_sums(eval_fn, st.params, sl.eval_batches(
        held_out, c.eval_batch_size, max_length=c.max_length, min_length=c.min_length,
        rows=parallel.process_rows(c.eval_batch_size)), mesh)
    return {"eval_loss": total["loss_sum"] / max(total["weight"], 1e-9),
            "eval_tokens": total["weight"]}

  state, logged, start_step = runner.run_loop(
      name="sl_train", out_dir=out_dir, state=state, step_fn=step_fn, local_batches=batches,
      mesh=mesh, steps=steps, ckpts=ckpts, meta=meta, model_config=model_cfg,
      peak_flops=c.peak_flops, show_progress=c.progress,
      extra_metrics=lambda m: {"truncated_examples": float(truncated)},
      evaluate=evaluate if held_out else None, eval_every=c.eval_every, evaluate_at_start=True,
      evaluate_at_end=True)
  final_eval = {k: v for k, v in logged.items() if k.startswith("eval_")}
  summary = {"steps": steps, "start_step": start_step, "examples": len(train),
             "held_out_examples": len(held_out), "initial_eval": runner.initial_metrics(out_dir),
             "truncated_examples": truncated, "final": logged,
             "checkpoints": ckpts.directory}
  if c.export_hf:
    export = runner.export_hf(state.params, out_dir, model_cfg, model.tokenizer)
    if export:
      summary["export_hf"] = export
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    print(f"sl_train: {steps} steps, final loss {logged.get('loss', float('nan')):.4f}"
          + (f", eval loss {final_eval['eval_loss']:.4f}" if final_eval else ""), flush=True)
  return summary

