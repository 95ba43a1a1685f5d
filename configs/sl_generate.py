"""SL-CAI data: answer red-team prompts, critique and revise under the constitution, and write
the SL training file (revisions mixed with helpful answers) for `sl_train`.

python -m cai_jax.main --config configs/sl_generate.py --workdir runs/slcai \
    --config.sl_generate.limit=16 --config.sl_generate.rounds=2
Outputs in WORKDIR/sl_generate/: records.jsonl, helpful.jsonl, sl_train.jsonl, sl_eval.jsonl
(held-out revisions, with heldout_fraction > 0), report.json.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("sl_generate")
  config.mesh = config_defaults.mesh_config()  # each process samples over its own devices
  config.distributed = config_defaults.distributed_config()  # several processes: records split
  # A name in constitutions/ (harmless, caveats), a constitution .json file, or a folder with
  # the paper's prompt files (runs the paper's exact constitution).
  config.constitution = "harmless"
  config.sl_generate = dict(
      prompts="red_team:train",   # ours (:train = all but the held-out :test split) or a jsonl
      helpful_prompts="helpful:train",  # ours or a jsonl; '' = no helpful answers
      limit=0,                    # red-team prompts to use (0 = all)
      helpful_ratio=1.0,          # helpful examples per red-team prompt used (not per SL row:
                                  # with all_revisions a prompt gives up to `rounds` rows)
      rounds=4,                   # critique -> revision rounds, one drawn principle each
      targets="all_revisions",    # SL rows per record: "all_revisions" = each round's revision
                                  # with the prompt (the paper's, section 3.1), id RECORD:rK;
                                  # "final" = the last revision only, id RECORD
      skip_critique=False,        # revise directly, without sampling a critique
      continue_transcript=True,   # round r+1 continues the transcript (the paper's layout)
      temperature=1.0,            # 0 = greedy
      top_k=0,
      top_p=1.0,
      max_response_tokens=128,
      max_critique_tokens=128,
      max_revision_tokens=128,
      max_conversation_tokens=512,  # longer red-team conversations are skipped and counted
      max_prompt_length=4096,     # sampler budget per row after the cached few-shot prefix
      batch_size=8,               # sampler row slots (continuous batching refills them)
      block_size=32,              # prompts per sampler call and per appended block of records
      chunk_size=16,              # stop-string check interval, for stops ending in whitespace
      drop_flagged=True,          # leave degenerate outputs out of the SL file: a flagged
                                  # revision (only the text trained on counts, not the initial
                                  # answer or critique), a flagged helpful answer
      heldout_fraction=0.0,       # share of the records with a usable revision written to
                                  # sl_eval.jsonl instead of sl_train.jsonl (by a hash of the
                                  # record id: all rounds of a record on the same side)
      output="",                  # records jsonl; default WORKDIR/sl_generate/records.jsonl
      report_examples=5,          # records printed in full by the report
  )
  return config
