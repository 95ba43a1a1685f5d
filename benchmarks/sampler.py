"""Generation throughput: cai_jax's KV-cache sampler vs transformers' generate, same prompts.

python benchmarks/sampler.py
(a) Gemma 3 270M float32, greedy, 128 new tokens (all of them: cai_jax without EOS ids,
    transformers with min_new_tokens), at batch 1 and batch 8; tokens/s, and the fraction of the
    machine's memory read bandwidth that batch-1 decoding reaches (every step reads all
    parameters: bytes_per_param * num_params bytes; bandwidth measured here by summing a 1 GB
    float32 array: on CPU the faster of numpy and XLA, on an accelerator XLA on the device).
    Beside each batch size: the decode step's parameter matmuls alone (every matmul of a step,
    chained, in one compiled loop; no attention, norms or sampling) timed on the same weights,
    a measured ceiling for any decoder made of XLA's matmuls on this machine; and the bound
    that reading every parameter once per step at the measured bandwidth puts on any decoder.
(b) a ~1,500-token shared prefix + 16 short prompts, 32 new tokens, with and without prefix
    caching (the prefix prefill is part of the timed work).
In (a) both implementations are loaded at once and their timed runs alternate (--repeats of
each, after a first cai_jax call and a short transformers warm-up), so that both meet the same
machine: on a shared CPU other processes change its speed from minute to minute. Each side's
fastest run counts; the first cai_jax call's extra time over it is compilation, reported
separately. (b) runs cai_jax only (the uncached case, minutes long, once after its first call).

Runs on whatever JAX's default device is (a GPU when JAX sees one); transformers runs on CUDA
when torch sees it. Options:
  --random-weights --tokenizer PATH   the gemma3-270m architecture with random parameters and a
      tokenizer.model read from PATH, for machines without the GGUF; transformers gets the same
      parameters through an HF folder written to a temporary directory.
  --dtype bfloat16   parameters and matmuls in bfloat16 for both implementations (meant for GPU).
  --param-dtype bfloat16   cai_jax samples with bfloat16 weights fed to its matmuls as stored,
      float32 activations and accumulation (`Sampler(param_dtype=...)`); transformers stays in
      --dtype. Adds the greedy agreement with a float32 cai_jax sampler (8 prompts x 64 tokens)
      and counts the bound and the bandwidth fraction in the narrow weights' bytes.
  --new-tokens, --batch-sizes, --prefix-tokens, --prefix-prompts, --prefix-new-tokens,
  --bandwidth-gb, --repeats, --no-transformers   smaller settings for smoke runs.
The last line is one JSON object (a line with "partial": true is printed after (a), so a crash
in (b) still leaves those numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.sampling.sampler import Sampler  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Human: How do I bake bread at home?\n\nAssistant:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The three most important things to remember when learning a new language are",
    "Write a short poem about the moon.",
    "Human: What causes the seasons on Earth?\n\nAssistant:",
    "In 1969, the first humans",
]
QUESTIONS = [
    "What is the boiling point of water?", "How do plants make food?",
    "Can you recommend a good book?", "Why do cats purr?", "What is a prime number?",
    "How far away is the Moon?", "How do I tie a bowline knot?", "What is inflation?",
    "Who wrote Hamlet?", "Why is the sky blue?", "How do vaccines work?",
    "What should I cook tonight?", "How do airplanes fly?", "What is machine learning?",
    "How can I sleep better?", "What is the speed of light?",
]


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def read_bandwidth_gb_s(gigabytes: float = 1.0, calls_per_timing: int = 1) -> dict:
  """Best of 5 full reads of a float32 array: numpy's sum (one host thread) and XLA's (all cores
  on CPU; the device's memory on an accelerator). With calls_per_timing > 1 that many XLA sums
  are dispatched back to back and timed together, hiding the per-call dispatch latency, which
  is comparable to one sum's time on a GPU."""
  import jax
  import jax.numpy as jnp

  a = np.ones(int(gigabytes * 2**30) // 4, np.float32)
  best_np = min(timed(lambda: float(a.sum()))[1] for _ in range(5))
  x = jnp.asarray(a)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()

  def run():
    for _ in range(calls_per_timing):
      y = total(x)
    y.block_until_ready()

  best_jax = min(timed(run)[1] for _ in range(5)) / calls_per_timing
  return {"numpy_sum_gb_s": a.nbytes / best_np / 1e9, "xla_sum_gb_s": a.nbytes / best_jax / 1e9}


def matmul_chain(sampler: Sampler, batch: int):
  """one_step(i, x_BD) -> x_BD: one decode step's parameter matmuls and nothing else: every
  layer's q/k/v/o and MLP projections on [batch, D] activations and the vocabulary projection
  as the sampler makes it for `batch` rows (its own `_project`, in the layout it picks, with
  its [D, V] embedding copy where it keeps one), chained so that none can be skipped."""
  import jax
  import jax.numpy as jnp

  from cai_jax.model import decoder
  from cai_jax.sampling import sampler as sampler_lib

  config, params = sampler.config, sampler.params
  D = config.embed_dim
  layers = [params[f"layer_{i}"] for i in range(config.num_layers)]
  mats = [(l["attn"]["q_proj"].reshape(D, -1), l["attn"]["k_proj"].reshape(D, -1),
           l["attn"]["v_proj"].reshape(D, -1), l["attn"]["o_proj"].reshape(-1, D),
           l["mlp"]["gate"], l["mlp"]["up"], l["mlp"]["down"]) for l in layers]
  cpu = sampler._cpu  # noqa: SLF001 - the sampler's own choices, not a copy of them
  embedding_DV = sampler._embedding_for(batch)  # noqa: SLF001
  vocab_axis = 0 if sampler_lib._vocab_major(cpu, embedding_DV, batch) else 1  # noqa: SLF001

  def mm(x, w):  # as the model feeds its matmuls (narrow weights as stored, see decoder)
    x, w, acc = decoder.matmul_operands(config, x, w)
    return jnp.matmul(x, w, preferred_element_type=acc)

  def one_step(_, x):
    small = jnp.asarray(1e-3, x.dtype)
    for wq, wk, wv, wo, gate, up, down in mats:
      q, k, v = mm(x, wq), mm(x, wk), mm(x, wv)
      x = x + small * mm(q, wo) + small * (k[:, :1] + v[:, :1])
      x = x + small * mm(jax.nn.gelu(mm(x, gate), approximate=True) * mm(x, up), down)
    logits = sampler_lib._project(sampler.model, cpu, params, embedding_DV, x)  # noqa: SLF001
    return x + small * jnp.max(logits, axis=vocab_axis)[:, None].astype(x.dtype)

  return one_step


def matmul_floor_step_s(sampler: Sampler, batch: int, steps: int = 16) -> float:
  """Seconds per decode step of only the step's parameter matmuls (`matmul_chain`) at `batch`
  rows, `steps` of them in one compiled loop, fastest of 3.

  Each step reads every parameter once, as a decode step does; attention over the cache,
  norms, RoPE, cache writes and sampling are left out, so no decoder built from these XLA
  matmuls runs faster than this on this machine: it bounds what a batch size can reach."""
  import jax
  import jax.numpy as jnp

  one_step = matmul_chain(sampler, batch)
  run = jax.jit(lambda x: jax.lax.fori_loop(0, steps, one_step, x))
  x = jnp.full((batch, sampler.config.embed_dim), 0.01, jnp.dtype(sampler.config.dtype))
  jax.block_until_ready(run(x))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(run(x))
    best = min(best, time.perf_counter() - t0)
  return best / steps


def ours_timed(fn, repeats: int):
  """(result, first-call seconds, fastest of `repeats` further calls in seconds)."""
  _, first = timed(fn)
  runs = [timed(fn) for _ in range(max(1, repeats))]
  out, best = min(runs, key=lambda r: r[1])
  return out, first, best


def prefix_text(tok, target_tokens: int) -> str:
  lines = ["The following principles guide an AI assistant that is helpful, honest and harmless."]
  i = 0
  while len(tok.encode("\n".join(lines), add_bos=True)) < target_tokens:
    i += 1
    lines.append(f"Principle {i}: Among the possible responses, choose the one that is most "
                 f"{['helpful', 'honest', 'harmless', 'careful', 'respectful'][i % 5]} and least "
                 f"{['evasive', 'preachy', 'dangerous', 'misleading', 'condescending'][i % 5]}, "
                 f"and explain the reasoning in plain language where it helps the person.")
  return "\n".join(lines) + "\n\nWhat follows is a conversation with the assistant."


def narrow_weights_agreement(sampler: Sampler, model, tok, new: int = 64) -> dict:
  """Greedy tokens of the narrow-weight sampler against a sampler with the checkpoint's own
  weights, PROMPTS x `new` tokens (no EOS): the share of positions where they agree, and per
  prompt how many leading tokens agree."""
  reference = Sampler(model.config, model.params, tok, eos_ids=(), max_batch=len(PROMPTS))
  ours = sampler.generate(PROMPTS, max_new_tokens=new).tokens
  theirs = reference.generate(PROMPTS, max_new_tokens=new).tokens
  leading = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), new)
             for x, y in zip(ours, theirs)]
  same = float(np.mean([np.mean(np.asarray(x) == np.asarray(y)) for x, y in zip(ours, theirs)]))
  print(f"greedy agreement with {model.config.param_dtype} weights over {len(PROMPTS)} prompts x "
        f"{new} tokens: {same:.1%} of positions; leading tokens in agreement {leading}",
        flush=True)
  return {"narrow_greedy_agreement": same, "narrow_greedy_leading_agree": leading,
          "narrow_greedy_prompts": len(PROMPTS), "narrow_greedy_tokens": new}


def cycled(items, n):
  return [items[i % len(items)] for i in range(n)]


def random_model(tokenizer_path: str, dtype: str, seed: int):
  """The gemma3-270m architecture with random parameters (the model's own initialisers: unit
  normal embedding, fan-in scaled projections, zero norm scales, so activations and logits stay
  finite) and a tokenizer.model from disk; shaped like loader.LoadedModel, source=None."""
  import jax

  from cai_jax.model import families
  from cai_jax.model import decoder
  from cai_jax.tokenizer import Tokenizer

  tok = Tokenizer.from_file(tokenizer_path)
  config = families.preset("gemma3-270m", param_dtype=dtype, dtype=dtype)
  if tok.vocab_size > config.vocab_size:
    raise SystemExit(f"{tokenizer_path}: {tok.vocab_size} pieces, more than the model's "
                     f"{config.vocab_size} vocabulary rows")
  # Initialised on the host CPU backend (an accelerator spent over a minute compiling the
  # initialisers), then moved to the default device.
  with jax.default_device(jax.devices("cpu")[0]):
    params = jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
  params = jax.block_until_ready(jax.device_put(params, jax.devices()[0]))
  return types.SimpleNamespace(config=config, params=params, tokenizer=tok, source=None)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/cai_jax"))
  parser.add_argument("--checkpoint", default="gemma3-270m",
                      help="any model.checkpoint cai_jax loads (e.g. smollm2-135m)")
  parser.add_argument("--new_tokens", "--new-tokens", type=int, default=128)
  parser.add_argument("--batch-sizes", default="1,8",
                      help="comma-separated batch sizes for (a); batch 1 gives the bandwidth "
                           "fraction")
  parser.add_argument("--prefix-tokens", type=int, default=1500,
                      help="shared prefix length for (b); 0 skips (b)")
  parser.add_argument("--prefix-prompts", type=int, default=16)
  parser.add_argument("--prefix-new-tokens", type=int, default=32)
  parser.add_argument("--bandwidth-gb", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs per case (after the first call); the fastest counts")
  parser.add_argument("--random-weights", action="store_true",
                      help="gemma3-270m architecture with random parameters (needs --tokenizer)")
  parser.add_argument("--tokenizer", help="tokenizer.model for --random-weights")
  parser.add_argument("--seed", type=int, default=0, help="init seed for --random-weights")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="param_dtype and dtype of cai_jax, torch dtype of transformers")
  parser.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None,
                      help="cai_jax's sampling weights (default: --dtype)")
  parser.add_argument("--no-transformers", action="store_true",
                      help="skip the transformers reference")
  args = parser.parse_args()
  if args.random_weights and not args.tokenizer:
    parser.error("--random-weights needs --tokenizer PATH (a SentencePiece tokenizer.model)")
  n_new = args.new_tokens
  batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]

  import jax
  import jax.numpy as jnp

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  if args.dtype == "bfloat16" and on_cpu:
    print("note: --dtype bfloat16 is meant for GPU; on CPU both implementations are slow in it",
          flush=True)
  print(f"JAX device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s)",
        flush=True)

  bw = read_bandwidth_gb_s(args.bandwidth_gb, calls_per_timing=1 if on_cpu else 10)
  # On CPU numpy's single thread can beat XLA's sum, so the machine's bandwidth is the faster of
  # the two; on an accelerator the parameters live in device memory, which only XLA measured.
  bandwidth = max(bw.values()) if on_cpu else bw["xla_sum_gb_s"]
  print(f"read bandwidth: numpy (host) {bw['numpy_sum_gb_s']:.1f} GB/s, XLA ({device.platform}) "
        f"{bw['xla_sum_gb_s']:.1f} GB/s", flush=True)

  if args.random_weights:
    (model, init_s) = timed(lambda: random_model(args.tokenizer, args.dtype, args.seed))
    print(f"random gemma3-270m parameters ({args.dtype}): {init_s:.1f} s", flush=True)
  else:
    from cai_jax.checkpoints import loader
    model = loader.load(args.checkpoint, cache_dir=args.cache_dir, param_dtype=args.dtype,
                        dtype=args.dtype)
  tok = model.tokenizer
  num_params = model.config.num_params()
  # No EOS ids: every row generates all n_new tokens, as transformers does with min_new_tokens.
  # max_batch covers every case, so that each batch size runs as one batch of that many rows
  # (the Sampler's default, 16, would split larger ones into batches of 16 run one after another).
  sampler = Sampler(model.config, model.params, tok, eos_ids=(),
                    max_batch=max([*batch_sizes, args.prefix_prompts]),
                    param_dtype=args.param_dtype)
  bytes_per_param = jnp.dtype(sampler.config.param_dtype).itemsize
  out = {"device": device.device_kind, "platform": device.platform,
         "weights": "random" if args.random_weights else args.checkpoint, "dtype": args.dtype,
         "sampling_param_dtype": sampler.config.param_dtype,
         "num_params": num_params, "new_tokens": n_new, "repeats": args.repeats, **bw,
         "bandwidth_gb_s": bandwidth}
  speedup_keys = []

  def final_json(**extra):
    keys = [f"batch{b}_speedup" for b in batch_sizes if f"batch{b}_speedup" in out]
    keys += speedup_keys
    return json.dumps({**{k: out[k] for k in keys},
                       **{k: v for k, v in out.items() if k not in keys}, **extra})

  hf_folder = None
  try:
    # transformers is loaded first and its runs alternate with cai_jax's, so that both see the
    # same machine (other processes on a shared CPU change its speed from minute to minute).
    hf_generate = None if args.no_transformers else load_transformers(args, model, tok, out)
    if hf_generate is not None:
      hf_folder = out.pop("_hf_folder", None)

    # ---------------------------------------------------------------- (a) batch 1 and batch 8
    finite = True
    for batch in batch_sizes:
      prompts = cycled(PROMPTS, batch)
      res, first = timed(lambda: sampler.generate(prompts, max_new_tokens=n_new))
      assert sum(res.num_tokens) == batch * n_new
      finite = finite and all(np.isfinite(lp).all() for lp in res.logprobs)
      ours_runs, hf_runs, gen = [], [], None
      if hf_generate is not None:
        hf_generate(prompts, 4)  # warm-up (on CUDA kernels are picked per shape on first use)
      for r in range(max(1, args.repeats)):
        pair = [lambda: ours_runs.append(timed(
                    lambda: sampler.generate(prompts, max_new_tokens=n_new))[1])]
        if hf_generate is not None:
          pair.append(lambda: hf_runs.append(timed(lambda: hf_generate(prompts, n_new))))
        for run in (pair if r % 2 == 0 else pair[::-1]):
          run()
      ours = min(ours_runs)
      out[f"ours_batch{batch}_tok_s"] = batch * n_new / ours
      out[f"ours_batch{batch}_compile_s"] = first - ours
      print(f"cai_jax batch {batch}: {batch * n_new / ours:.1f} tok/s ({ours:.2f} s; first "
            f"call {first:.2f} s)", flush=True)
      floor = matmul_floor_step_s(sampler, batch)
      out[f"batch{batch}_matmul_floor_tok_s"] = batch / floor
      print(f"  the step's parameter matmuls alone: {1e3 * floor:.1f} ms = at most "
            f"{batch / floor:.1f} tok/s; cai_jax decodes at "
            f"{(batch * n_new / ours) / (batch / floor):.0%} of that", flush=True)
      # Every decode step reads every parameter once, so no decoder that reads them in this
      # dtype can beat batch x bandwidth / parameter bytes on this machine.
      bound = batch * bandwidth * 1e9 / (bytes_per_param * num_params)
      out[f"batch{batch}_bandwidth_bound_tok_s"] = bound
      print(f"  reading the parameters once per step at {bandwidth:.1f} GB/s: at most "
            f"{bound:.1f} tok/s", flush=True)
      if hf_runs:
        gen, secs = min(hf_runs, key=lambda r: r[1])
        # Leading greedy tokens of the first row on which both implementations agree (n_new
        # when they agree throughout; float rounding can flip a near-tie, bfloat16 sooner).
        theirs = gen[0, gen.shape[1] - n_new:].tolist()
        mine = list(res.tokens[0])
        out[f"batch{batch}_greedy_agree_tokens"] = next(
            (i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), n_new))
        out[f"hf_batch{batch}_tok_s"] = batch * n_new / secs
        out[f"batch{batch}_speedup"] = secs / ours
        print(f"transformers batch {batch}: {batch * n_new / secs:.1f} tok/s ({secs:.2f} s): "
              f"cai_jax {secs / ours:.2f}x", flush=True)
    if sampler.config.param_dtype != model.config.param_dtype:
      out.update(narrow_weights_agreement(sampler, model, tok))
    out["finite_logprobs"] = bool(finite)
    if not finite:
      print("WARNING: non-finite log-probs in cai_jax's generations", flush=True)
    if "ours_batch1_tok_s" in out:
      steps_per_s = out["ours_batch1_tok_s"]  # one token per decode step at batch 1
      achieved = bytes_per_param * num_params * steps_per_s / 1e9
      out["batch1_param_read_gb_s"] = achieved
      out["batch1_bandwidth_fraction"] = achieved / bandwidth
      print(f"batch-1 decode reads {achieved:.1f} GB/s of parameters = "
            f"{100 * achieved / bandwidth:.0f}% of the measured {bandwidth:.1f} GB/s", flush=True)
    print(final_json(partial=True), flush=True)

    # ---------------------------------------------------------------- (b) prefix caching
    if args.prefix_tokens > 0:
      n_q, n_pre_new = args.prefix_prompts, args.prefix_new_tokens
      prefix = prefix_text(tok, args.prefix_tokens)
      prompts = [f"\n\nHuman: {q}\n\nAssistant:" for q in cycled(QUESTIONS, n_q)]
      out["prefix_tokens"] = len(tok.encode(prefix, add_bos=True))

      def with_cache():
        pc = sampler.prefill_prefix(prefix)
        return sampler.generate(prompts, max_new_tokens=n_pre_new, prefix=pc)

      def without_cache():
        return sampler.generate([prefix + p for p in prompts], max_new_tokens=n_pre_new)

      _, first_c, second_c = ours_timed(with_cache, args.repeats)
      print(f"prefix cached: {second_c:.2f} s (first call {first_c:.2f} s)", flush=True)
      _, first_u, second_u = ours_timed(without_cache, 1)
      print(f"no prefix cache: {second_u:.2f} s (first call {first_u:.2f} s)", flush=True)
      out.update(prefix_cached_s=second_c, prefix_cached_compile_s=first_c - second_c,
                 prefix_uncached_s=second_u, prefix_uncached_compile_s=first_u - second_u,
                 prefix_cached_tok_s=n_q * n_pre_new / second_c,
                 prefix_uncached_tok_s=n_q * n_pre_new / second_u,
                 prefix_cache_speedup=second_u / second_c)
      speedup_keys.append("prefix_cache_speedup")
  finally:
    if hf_folder is not None:
      shutil.rmtree(hf_folder, ignore_errors=True)
  print(final_json())


def load_transformers(args, model, tok, out):
  """transformers' generate on the same parameters, as a function (prompts, new) -> the
  generated ids; None (with out["hf_error"]) when transformers is missing or fails to load."""
  try:
    import torch
    from transformers import AutoModelForCausalLM
  except ImportError as e:
    out["hf_error"] = f"ImportError: {e}"[:500]
    return None
  try:
    hf_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    out["hf_device"] = torch.cuda.get_device_name(0) if hf_device == "cuda" else "cpu"
    source = model.source
    if source is None:  # random weights: the same parameters, written as an HF folder
      from cai_jax.checkpoints import hf as hf_io
      source = tempfile.mkdtemp(prefix="cai_jax_bench_hf_")
      out["_hf_folder"] = source
      _, secs = timed(lambda: hf_io.save_hf_folder(source, model.config, model.params, tok))
      print(f"wrote the random parameters as an HF folder in {secs:.1f} s", flush=True)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).eval().to(hf_device)
    out["torch_threads"] = torch.get_num_threads()
  except Exception as e:  # cai_jax's numbers still come
    traceback.print_exc()
    out["hf_error"] = f"{type(e).__name__}: {e}"[:500]
    if "_hf_folder" in out:
      shutil.rmtree(out.pop("_hf_folder"), ignore_errors=True)
    return None

  def hf_generate(prompts, new):
    ids = [tok.encode(p, add_bos=True) for p in prompts]
    width = max(map(len, ids))  # left-padded, as transformers generates from padded batches
    input_ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in ids],
                             device=hf_device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=hf_device)
    with torch.no_grad():
      gen = hf.generate(input_ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                        min_new_tokens=new, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    if hf_device == "cuda":
      torch.cuda.synchronize()
    assert gen.shape[1] - width == new
    return gen

  return hf_generate

if __name__ == "__main__":
  main()
