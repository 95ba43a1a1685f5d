"""Training-step throughput and memory: cai_jax's engine vs transformers + torch AdamW, same batch.

python benchmarks/train_step.py
Gemma 3 270M, float32, one global batch of 8 x 512 random token ids (fixed seed; every position
a real token, loss weight 1 on all but the last position, i.e. next-token NLL on 8 x 511
targets), full optimizer steps (forward, backward, AdamW update), 1 warm-up step then --steps
timed ones, each timed to completion (block_until_ready / cuda.synchronize):
  ours   cai_jax.train.engine: make_train_step + compile_step over a {'data': -1} mesh,
         lm.make_lm_loss (chunked vocabulary projection, --loss-chunk-tokens), the AdamW of
         optim.make_optimizer (optim_config(learning_rate=1e-5, warmup_steps=0): b1 0.9, b2 0.95,
         no weight decay, global-norm clipping at 1.0), --micro-batches accumulated in the step.
  ref    transformers Gemma3ForCausalLM(input_ids, labels=input_ids) (it shifts the labels
         itself), torch.optim.AdamW(lr=1e-5, betas=(0.9, 0.95), weight_decay=0), gradient
         clipping at 1.0 like ours, --ref-micro-batches with gradient accumulation (loss / M; rows
         m, m+M, ... like the engine's split). Default 4 on CPU (a plain 8 x 512 step with full
         float32 logits does not fit in 24 GB there), 1 on CUDA.
Tokens/s = batch x length / mean timed step time. For ours, compile_s = first step time minus
the mean timed step time.

Each implementation runs in its own child process (`--side ours`, `--side ref`), so that each
reports its own peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss) and, on a GPU, its own peak
device memory (JAX: memory_stats()['peak_bytes_in_use']; torch: cuda.max_memory_allocated()).
The parent (no --side) prepares the weights, measures the matmul peak, runs the two children one
after the other and prints the combined JSON object. With --rounds R it runs each child R times,
alternating (ours, ref, ref, ours, ...) so that a change in the machine's speed during the run
(other processes on a shared CPU) meets both sides alike; each side's fastest round counts
(`rounds_tokens_per_s`, `ref_rounds_tokens_per_s` and the per-round `rounds_speedup` list
them). Both children load the same HF folder: the converted Gemma 3 270M checkpoint
(loader.resolve('gemma3-270m')), or with
  --random-weights --tokenizer PATH   the gemma3-270m architecture with random parameters (the
      model's own initialisers, seed --seed) written by a short-lived child (`--side
      write-random`, on JAX's CPU backend) to a temporary HF folder with PATH as its
      tokenizer.model; ours reads it through loader.load like the real checkpoint.
So the two sides start from identical parameters and their first-step losses should agree.

mfu = flops.train_flops_per_token(config, length) x tokens/s / peak, the model FLOPs being
6 x parameters per token plus attention (see cai_jax.train.flops), peak = the best FLOP/s of
one jitted float32 n x n matmul (flops.measure_matmul_peak; n = --peak-n, default 2048 on CPU
and 8192 on an accelerator, where smaller matmuls measure launch latency more than throughput),
measured by the parent on JAX's default device before the children start. ref_mfu likewise.
With --dtype bfloat16 on an accelerator a bfloat16 peak is measured too (mfu_vs_bf16_peak);
`mfu` stays relative to the float32 peak.

Float32 matmuls on NVIDIA GPUs: JAX computes them in TF32 by default, torch does not. The
default --fp32-matmul tf32 gives torch the same (set_float32_matmul_precision('high')), and the
peak is measured at JAX's default too; --fp32-matmul highest makes both sides, and the peak,
full float32. On CPU the setting changes nothing.

Options: --dtype bfloat16 (parameters, matmuls and torch dtype in bfloat16 for both sides: a
throughput comparison, not a training recipe; meant for GPU), --micro-batches, --remat,
--loss-chunk-tokens, --ref-micro-batches, --steps, --rounds, --batch, --length, --skip-ref,
--peak-n.
A line with "partial": true is printed after ours finishes; the last line is one JSON object
(ref fields null and `ref_error` set when the reference fails or is skipped).
Targets (from the issue): speedup >= 1.25, mfu >= 0.60, peak_rss_gb <= 10.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGETS = {"speedup": 1.25, "mfu": 0.60, "peak_rss_gb": 10.0}


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def vocab_size_of(folder: str) -> int:
  with open(os.path.join(folder, "config.json")) as f:
    raw = json.load(f)
  return int(raw.get("vocab_size") or raw["text_config"]["vocab_size"])


def token_batch(batch: int, length: int, vocab_size: int, seed: int) -> np.ndarray:
  """int32 [batch, length] random token ids; the same array on both sides."""
  return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, length), dtype=np.int32)


def summarize_steps(first_s: float, step_times: list[float], tokens: int) -> dict:
  step_s = float(np.mean(step_times))
  return {"tokens_per_s": tokens / step_s, "step_s": step_s, "min_step_s": float(min(step_times)),
          "first_step_s": first_s, "step_times": step_times, "steps": len(step_times)}


# ---------------------------------------------------------------------------------- children
def write_random_folder(args) -> dict:
  """The gemma3-270m architecture with random parameters, saved as an HF folder."""
  import jax

  from cai_jax.checkpoints import hf
  from cai_jax.model import families
  from cai_jax.model import decoder
  from cai_jax.tokenizer import Tokenizer

  tok = Tokenizer.from_file(args.tokenizer)
  config = families.preset("gemma3-270m")
  if tok.vocab_size > config.vocab_size:
    raise SystemExit(f"{args.tokenizer}: {tok.vocab_size} pieces, more than the model's "
                     f"{config.vocab_size} vocabulary rows")
  params, init_s = timed(lambda: jax.block_until_ready(
      jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(args.seed))))
  _, save_s = timed(lambda: hf.save_hf_folder(args.folder, config, params, tok))
  print(f"random gemma3-270m parameters: init {init_s:.1f} s, HF folder written in {save_s:.1f} s",
        flush=True)
  return {"side": "write-random", "folder": args.folder, "init_s": init_s, "save_s": save_s}


def run_ours(args) -> dict:
  import jax

  if args.fp32_matmul == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
  from cai_jax import config_defaults, parallel
  from cai_jax.checkpoints import loader
  from cai_jax.data import sl
  from cai_jax.train import engine, flops, lm, optim

  device = jax.devices()[0]
  print(f"JAX device: {device.platform} ({device.device_kind}), {jax.device_count()} "
        f"device(s)", flush=True)
  mesh = parallel.make_mesh({"data": -1})
  B, L, M = args.batch, args.length, args.micro_batches
  if B % M:
    raise SystemExit(f"--batch {B} is not divisible by --micro-batches {M}")
  parallel.check_batch(B // M, mesh, "batch / micro_batches")

  model, load_s = timed(lambda: loader.load(
      args.folder, cache_dir=args.cache_dir, param_dtype=args.dtype, dtype=args.dtype,
      shardings_for=lambda cfg: engine.model_shardings(cfg, mesh)))
  print(f"loaded {args.folder} in {load_s:.1f} s", flush=True)
  config = model.config.replace(remat=args.remat or False)

  opt_cfg = config_defaults.optim_config(learning_rate=1e-5, warmup_steps=0)
  with opt_cfg.unlocked():
    opt_cfg.total_steps = args.steps + 1
  optimizer = optim.make_optimizer(opt_cfg)
  shardings, _ = engine.state_shardings(config, mesh, optimizer)
  state = engine.new_state(model.params, optimizer, jax.random.PRNGKey(args.seed), shardings)
  del model
  loss_fn = lm.make_lm_loss(config, chunk_tokens=args.loss_chunk_tokens)
  step_fn = engine.compile_step(
      engine.make_train_step(loss_fn, optimizer, micro_batches=M, mesh=mesh,
                             learning_rate_fn=optim.schedule(opt_cfg)),
      shardings, mesh)

  ids = token_batch(B, L, config.vocab_size, args.seed)
  mask = np.ones(L, bool)
  mask[0] = False  # weights[i] = mask[i + 1]: every position but the last is a target
  local = sl.make_batch([sl.Example(row, mask) for row in ids], L)
  assert float(local["weights"].sum()) == B * (L - 1)
  batch = parallel.global_batch({k: v[parallel.process_rows(B)] for k, v in local.items()}, mesh)

  losses = []

  def one_step():
    nonlocal state
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    losses.append(float(metrics["loss"]))

  _, first_s = timed(one_step)
  print(f"first step (compiles): {first_s:.2f} s, loss {losses[-1]:.4f}", flush=True)
  step_times = []
  for _ in range(args.steps):
    step_times.append(timed(one_step)[1])
    print(f"step: {step_times[-1]:.3f} s, loss {losses[-1]:.4f}", flush=True)
  out = {"side": "ours", **summarize_steps(first_s, step_times, B * L),
         "compile_s": first_s - float(np.mean(step_times)), "load_s": load_s,
         "micro_batches": M, "remat": args.remat or "", "loss_chunk_tokens": args.loss_chunk_tokens,
         "losses": losses, "loss_first": losses[0], "loss_last": losses[-1],
         "finite": bool(np.all(np.isfinite(losses))),
         "num_params": config.num_params(),
         "flops_per_token": flops.train_flops_per_token(config, L),
         "device": device.device_kind, "platform": device.platform,
         "num_devices": jax.device_count()}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
  out["peak_rss_gb"] = peak_rss_gb()
  return out


def run_ref(args) -> dict:
  import torch

  try:
    from transformers import Gemma3ForCausalLM as HFModel
  except ImportError:
    from transformers import AutoModelForCausalLM as HFModel
  import transformers

  torch.set_num_threads(os.cpu_count() or 1)
  cuda = torch.cuda.is_available()
  dev = "cuda" if cuda else "cpu"
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  if cuda:  # TF32 like JAX's default on GPU, or true float32 like --fp32-matmul highest
    torch.set_float32_matmul_precision("high" if args.fp32_matmul == "tf32" else "highest")
  M = args.ref_micro_batches or (1 if cuda else 4)
  B, L = args.batch, args.length
  if B % M:
    raise SystemExit(f"--batch {B} is not divisible by --ref-micro-batches {M}")
  torch.manual_seed(args.seed)

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def load():
    try:
      m = HFModel.from_pretrained(args.folder, dtype=torch_dtype)
    except TypeError:  # older transformers
      m = HFModel.from_pretrained(args.folder, torch_dtype=torch_dtype)
    return m.to(device=dev, dtype=torch_dtype).train()

  model, load_s = timed(load)
  print(f"transformers {transformers.__version__}, torch {torch.__version__} on {dev}, "
        f"{torch.get_num_threads()} threads; loaded in {load_s:.1f} s", flush=True)
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
  ids = torch.from_numpy(token_batch(B, L, vocab_size_of(args.folder), args.seed).astype(np.int64))
  ids = ids.to(dev)
  micro = [ids[m::M] for m in range(M)]  # rows m, m+M, ... like the engine's split

  losses = []

  def one_step():
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=dev)
    for x in micro:
      loss = model(input_ids=x, labels=x).loss
      (loss / M).backward()
      total += loss.detach().float() / M
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    sync()
    losses.append(total)

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  _, first_s = timed(one_step)
  print(f"first step: {first_s:.2f} s, loss {float(losses[-1]):.4f}", flush=True)
  step_times = []
  for _ in range(args.steps):
    step_times.append(timed(one_step)[1])
    print(f"step: {step_times[-1]:.3f} s", flush=True)
  losses = [float(x) for x in losses]
  out = {"side": "ref", **summarize_steps(first_s, step_times, B * L), "load_s": load_s,
         "micro_batches": M, "losses": losses, "loss_first": losses[0], "loss_last": losses[-1],
         "finite": bool(np.all(np.isfinite(losses))),
         "device": torch.cuda.get_device_name(0) if cuda else "cpu",
         "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "transformers": transformers.__version__,
         "attn_implementation": getattr(model.config, "_attn_implementation", None)}
  if cuda:
    out["device_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
  out["peak_rss_gb"] = peak_rss_gb()
  return out


# ---------------------------------------------------------------------------------- parent
class Terminated(Exception):
  pass


CHILD_ENV = dict(os.environ)  # before the parent changes its own environment


def run_child(args, side: str, folder: str, extra_env: dict | None = None):
  """(last JSON object or None, error string or None); the child's output is echoed as it comes."""
  cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--folder", folder,
         "--cache_dir", args.cache_dir, "--batch", str(args.batch), "--length", str(args.length),
         "--steps", str(args.steps), "--seed", str(args.seed), "--dtype", args.dtype,
         "--micro-batches", str(args.micro_batches),
         "--ref-micro-batches", str(args.ref_micro_batches),
         "--loss-chunk-tokens", str(args.loss_chunk_tokens), "--fp32-matmul", args.fp32_matmul]
  if args.remat:
    cmd += ["--remat", args.remat]
  if args.tokenizer:
    cmd += ["--tokenizer", args.tokenizer]
  env = {**CHILD_ENV, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=ROOT)
  result, tail = None, []
  try:
    for line in proc.stdout:
      line = line.rstrip("\n")
      print(f"  [{side}] {line}", flush=True)
      tail = (tail + [line])[-8:]
      if line.startswith("{"):
        try:
          result = json.loads(line)
        except json.JSONDecodeError:
          pass
    rc = proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  if rc == 0 and result is not None:
    return result, None
  why = f"exit code {rc}" + (" (killed: out of memory?)" if rc == -9 else "")
  errors = [t for t in tail if "Error" in t or "error" in t]
  return None, f"{side}: {why}: " + (errors[-1] if errors else " | ".join(tail[-3:]))[:400]


def measure_peaks(args) -> dict:
  import jax
  import jax.numpy as jnp

  if args.fp32_matmul == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
  from cai_jax.train import flops

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  n = args.peak_n or (2048 if on_cpu else 8192)
  out = {"device": device.device_kind, "platform": device.platform, "peak_n": n,
         "peak_flops": flops.measure_matmul_peak(n, jnp.float32, device=device)}
  if args.dtype == "bfloat16" and not on_cpu:
    out["peak_flops_bf16"] = flops.measure_matmul_peak(n, jnp.bfloat16, device=device)
  return out


def parent(args) -> None:
  # The parent's own JAX client (matmul peak) must not reserve most of the GPU's memory while the
  # children run (they get the environment as it was: JAX's default allocation for ours).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  def on_term(signum, frame):
    raise Terminated(f"terminated by signal {signum} (timed out?)")

  signal.signal(signal.SIGTERM, on_term)
  out = {"tokens_per_s": None, "peak_rss_gb": None, "ref_tokens_per_s": None, "speedup": None,
         "mfu": None, "ref_mfu": None, "ref_peak_rss_gb": None,
         "weights": "random" if args.random_weights else "gemma3-270m", "dtype": args.dtype,
         "fp32_matmul": args.fp32_matmul, "batch": args.batch, "length": args.length,
         "targets": TARGETS}
  tmp = None
  ours = None
  side = "ours"
  try:
    if args.random_weights:
      tmp = tempfile.mkdtemp(prefix="cai_jax_train_bench_")
      folder = os.path.join(tmp, "hf")
      res, err = run_child(args, "write-random", folder, {"JAX_PLATFORMS": "cpu"})
      if err:
        raise RuntimeError(err)
    else:
      from cai_jax.checkpoints import loader
      folder = loader.resolve("gemma3-270m", args.cache_dir)
    out["model_folder"] = None if args.random_weights else folder

    peaks, secs = timed(lambda: measure_peaks(args))
    out.update(peaks)
    print(f"matmul peak ({peaks['device']}, n={peaks['peak_n']}): float32 "
          f"{peaks['peak_flops'] / 1e12:.2f} TFLOP/s"
          + (f", bfloat16 {peaks['peak_flops_bf16'] / 1e12:.2f} TFLOP/s"
             if "peak_flops_bf16" in peaks else "") + f" ({secs:.1f} s)", flush=True)

    def combine():
      if ours_runs and ref_runs:
        out.update(
            ref_mfu=out["flops_per_token"] * out["ref_tokens_per_s"] / out["peak_flops"],
            speedup=out["tokens_per_s"] / out["ref_tokens_per_s"],
            rounds_speedup=[o["tokens_per_s"] / f["tokens_per_s"]
                            for o, f in zip(ours_runs, ref_runs)],
            first_loss_abs_diff=abs(ours_runs[0]["loss_first"] - ref_runs[0]["loss_first"]))

    ours_runs, ref_runs = [], []
    ref_skipped = args.skip_ref
    for r in range(args.rounds):
      # ours, ref, ref, ours, ...: a drift in the machine's speed during the run (other
      # processes on a shared CPU) then falls on both sides alike.
      for side in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
        if side == "ours":
          res, err = run_child(args, "ours", folder)
          if err:
            out["ours_error"] = err
            raise RuntimeError(err)
          ours_runs.append(res)
          ours = max(ours_runs, key=lambda o: o["tokens_per_s"])
          fpt = ours["flops_per_token"]
          out.update(
              tokens_per_s=ours["tokens_per_s"],
              peak_rss_gb=max(o["peak_rss_gb"] for o in ours_runs),
              mfu=fpt * ours["tokens_per_s"] / out["peak_flops"],
              compile_s=ours["compile_s"], step_s=ours["step_s"],
              first_step_s=ours["first_step_s"], step_times=ours["step_times"],
              steps=ours["steps"], micro_batches=ours["micro_batches"], remat=ours["remat"],
              loss_chunk_tokens=ours["loss_chunk_tokens"], loss_first=ours["loss_first"],
              loss_last=ours["loss_last"], losses=ours["losses"], finite=ours["finite"],
              num_params=ours["num_params"], flops_per_token=fpt,
              device_peak_gb=ours.get("device_peak_gb"), num_devices=ours["num_devices"],
              rounds_tokens_per_s=[o["tokens_per_s"] for o in ours_runs])
          if "peak_flops_bf16" in out:
            out["mfu_vs_bf16_peak"] = fpt * ours["tokens_per_s"] / out["peak_flops_bf16"]
          combine()
          print(json.dumps({**out, "partial": True}), flush=True)
        elif ref_skipped:
          out["ref_error"] = "skipped (--skip-ref)"
        else:
          res, err = run_child(args, "ref", folder, {"JAX_PLATFORMS": "cpu"})
          if err:
            out["ref_error"] = err
            ref_skipped = True
            continue
          ref_runs.append(res)
          ref = max(ref_runs, key=lambda o: o["tokens_per_s"])
          out.update(
              ref_tokens_per_s=ref["tokens_per_s"],
              ref_peak_rss_gb=max(o["peak_rss_gb"] for o in ref_runs),
              ref_step_s=ref["step_s"], ref_first_step_s=ref["first_step_s"],
              ref_step_times=ref["step_times"], ref_micro_batches=ref["micro_batches"],
              ref_loss_first=ref["loss_first"], ref_loss_last=ref["loss_last"],
              ref_losses=ref["losses"], ref_finite=ref["finite"],
              ref_device=ref["device"], ref_device_peak_gb=ref.get("device_peak_gb"),
              ref_torch_threads=ref["torch_threads"],
              ref_attn_implementation=ref["attn_implementation"], torch=ref["torch"],
              transformers=ref["transformers"],
              ref_rounds_tokens_per_s=[o["tokens_per_s"] for o in ref_runs])
          combine()
  except Terminated as e:
    out[f"{side}_error"] = str(e)
  except Exception as e:  # still print the JSON line
    traceback.print_exc()
    if ours is None:
      out.setdefault("ours_error", f"{type(e).__name__}: {e}"[:500])
    else:
      out.setdefault("ref_error", f"{type(e).__name__}: {e}"[:500])
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  out["targets_met"] = {
      "speedup": out["speedup"] is not None and out["speedup"] >= TARGETS["speedup"],
      "mfu": out["mfu"] is not None and out["mfu"] >= TARGETS["mfu"],
      "peak_rss_gb": out["peak_rss_gb"] is not None
      and out["peak_rss_gb"] <= TARGETS["peak_rss_gb"]}
  if out.get("ref_error"):
    print(f"reference: {out['ref_error']}", flush=True)
  print(json.dumps(out))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--side", choices=("ours", "ref", "write-random"),
                      help="internal: run one side in this process (the parent sets it)")
  parser.add_argument("--folder", help="internal: the HF folder the children load / write")
  parser.add_argument("--cache_dir", "--cache-dir", default=os.path.expanduser("~/.cache/cai_jax"))
  parser.add_argument("--random-weights", action="store_true",
                      help="gemma3-270m architecture with random parameters (needs --tokenizer)")
  parser.add_argument("--tokenizer", help="tokenizer.model for --random-weights")
  parser.add_argument("--seed", type=int, default=0, help="init and token seed")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="param_dtype and dtype of cai_jax, torch dtype of transformers")
  parser.add_argument("--fp32-matmul", choices=("tf32", "highest"), default="tf32",
                      help="float32 matmul precision on GPU for both sides and the peak: tf32 "
                           "(JAX's default; torch set to match) or highest (true float32)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up step")
  parser.add_argument("--micro-batches", type=int, default=1, help="cai_jax's micro-batches")
  parser.add_argument("--remat", default="", choices=["", "full", "dots"],
                      help="cai_jax: recompute each block ('full') or all but its matmul outputs "
                           "('dots') in the backward pass")
  parser.add_argument("--loss-chunk-tokens", type=int, default=1024,
                      help="cai_jax: tokens per vocabulary-projection chunk of the loss")
  parser.add_argument("--ref-micro-batches", type=int, default=0,
                      help="transformers' gradient-accumulation micro-batches (0: 4 on CPU, "
                           "1 on CUDA)")
  parser.add_argument("--skip-ref", action="store_true", help="skip the transformers reference")
  parser.add_argument("--rounds", type=int, default=1,
                      help="run the two children this many times each, alternating (ours, ref, "
                           "ref, ours, ...); each side's fastest round counts")
  parser.add_argument("--peak-n", type=int, default=0,
                      help="matmul size of the peak measurement (0: 2048 on CPU, 8192 otherwise)")
  args = parser.parse_args()
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  if args.rounds < 1:
    parser.error("--rounds must be >= 1")
  if args.side is None:
    if args.random_weights and not args.tokenizer:
      parser.error("--random-weights needs --tokenizer PATH (a SentencePiece tokenizer.model)")
    parent(args)
    return
  if not args.folder:
    parser.error("--side needs --folder")
  run = {"ours": run_ours, "ref": run_ref, "write-random": write_random_folder}[args.side]
  print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
  main()
