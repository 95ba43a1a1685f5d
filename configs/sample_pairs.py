"""RLAIF step 1: two answers per prompt from the policy (the pairs the feedback model labels).

python -m cai_jax.main --config configs/sample_pairs.py --workdir runs/slcai \
    --config.sample_pairs.prompts=red_team:train --config.sample_pairs.limit=64
With the workdir of an sl_train run the policy is its SL-CAI export (WORKDIR/sl_train/export_hf);
elsewhere set --config.model.checkpoint=RUN/sl_train/export_hf (or any checkpoint).
Outputs in WORKDIR/sample_pairs/: pairs.jsonl, report.json.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("sample_pairs")
  config.mesh = config_defaults.mesh_config()  # each process samples over its own devices
  config.distributed = config_defaults.distributed_config()  # several processes: records split
  # '' = the SL-CAI model exported by sl_train in this workdir: WORKDIR/sl_train/export_hf.
  config.model.checkpoint = ""
  # With conversation.policy_prefix='helpful_exchanges' the exchanges shown before each prompt
  # come from this constitution (initial_prefix):
  # a name in constitutions/, a constitution .json file, or the paper's prompt folder.
  config.constitution = "harmless"
  config.sample_pairs = dict(
      prompts="red_team:train",   # red-team prompts (axis 'harmless'): 'red_team', 'helpful'
                                  # (ours; :train / :test) or a prompts jsonl; '' = none
      limit=0,                    # red-team prompts to use (0 = all)
      helpful_prompts="helpful:train",  # helpfulness prompts (axis 'helpful'); '' = none
      helpful_limit=0,            # helpfulness prompts to use (0 = all)
      temperature=1.0,            # must be > 0: the two answers are independent samples
      top_k=0,
      top_p=1.0,
      max_response_tokens=128,
      max_conversation_tokens=512,  # longer prompts are skipped and listed in the report
      max_prompt_length=4096,     # sampler budget per row after the cached prefix
      batch_size=8,               # sampler row slots / 2 (2 answers per prompt; continuous
                                  # batching refills the slots)
      block_size=32,              # prompts per sampler call and per appended block of pairs
      chunk_size=16,              # stop-string check interval, for stops ending in whitespace
      output="",                  # pairs jsonl; default WORKDIR/sample_pairs/pairs.jsonl
  )
  return config
