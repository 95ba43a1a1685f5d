"""Generate completions for a prompts jsonl ({"id", "prompt"}) with the KV-cache sampler.

python -m cai_jax.main --config configs/generate.py --workdir runs/gen \
    --config.generate.prompts=IN.jsonl --config.generate.output=OUT.jsonl \
    --config.generate.max_new_tokens=128 --config.generate.temperature=0
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("generate")
  config.mesh = config_defaults.mesh_config()  # each process samples over its own devices
  config.distributed = config_defaults.distributed_config()  # several processes: rows split
  config.generate = dict(
      prompts="",               # jsonl with "id" and "prompt" per line
      output="",                # completions jsonl; default WORKDIR/generate/completions.jsonl
      max_new_tokens=128,
      temperature=1.0,          # 0 = greedy
      top_k=0,                  # 0 = off
      top_p=1.0,                # 1.0 = off
      stop=("\n\nHuman:",),     # stop strings, cut from the returned text
      prefix="",                # optional shared prefix, prefilled once for every prompt
      batch_size=16,            # rows per sampler batch; on a 2-core CPU 16 rows finished 1.3x the
                                # rows/s of 8 (270M, 48 red-team prompts, temperature 1)
      max_prompt_length=2048,   # longer prompts keep BOS and lose tokens from the left
      chunk_size=32,            # stop-string check interval, for stops ending in whitespace
      write_every=32,           # prompts per appended block of records
  )
  return config
