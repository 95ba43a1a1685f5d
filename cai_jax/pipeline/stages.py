"""The pipeline's stages and the wiring between them (which files a stage reads, what counts as
finished, the config each stage runs with): pure functions of the config and the workdir's
files, shared by the `pipeline` job (cai_jax/jobs/pipeline.py, which runs them) and the memory
planner (cai_jax/train/memory.py, which sizes them). See the job's docstring for the wiring."""

from __future__ import annotations

import os

import ml_collections

from cai_jax import config_defaults
from cai_jax.config_defaults import ConfigError

STAGES = ("sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train",
          "po_train", "eval", "report")

# The RL-CAI stage (`pipeline.rl.algorithm`, comma-separated): PPO against the preference model
# (rl_train, compared as 'rl') and/or one preference-optimisation loss on the AI labels
# (po_train, compared under the algorithm's name).
RL_ALGORITHMS = {"ppo": "rl_train", "dpo": "po_train", "ipo": "po_train"}

# Iterated online RLAIF (`pipeline.rounds` = N > 1): after the first round (the stages above),
# each later round r samples pairs from the previous round's policy, labels them, continues the
# previous round's PM on the new labels and runs the RL stage from that policy, all in
# WORKDIR/round_<r>/ (so every round's policy is kept); eval compares every round's policy.
ROUND_STAGES = ("sample_pairs", "feedback", "pm_train", "rl_train", "po_train")

# Red teaming against the policy (`pipeline.red_team.attacks` = N > 0, PPO, rounds > 1): in each
# later round r, after the PM is refreshed and before PPO, `red_team_generate` proposes N prompts
# (few-shot from the base model) and `red_team_attack` has round r - 1's policy answer them,
# scores the answers with round r's PM and keeps the `pipeline.red_team.keep` worst; round r's
# rl_train trains on the previous prompts plus those (ids attack-r<r>-...), so attacks found in
# every round accumulate.
RED_TEAM_STAGES = ("red_team_generate", "red_team_attack")

# Top-level fields of each stage's own config (configs/<stage>.py) besides job, seed, model and
# the stage's section; tests/test_pipeline.py checks they match the config files.
SHARED_FIELDS = {
    "sl_generate": ("constitution", "mesh", "distributed"),
    "sl_train": ("mesh", "distributed", "optim"),
    "sample_pairs": ("constitution", "mesh", "distributed"),
    "feedback": ("constitution", "mesh", "distributed"),
    "pm_train": ("mesh", "distributed", "optim"),
    "rl_train": ("constitution", "mesh", "distributed", "optim"),
    "po_train": ("mesh", "distributed", "optim"),
    "red_team_generate": ("mesh",),
    "red_team_attack": ("constitution", "mesh"),
    "eval": ("constitution", "mesh", "distributed"),
    "report": (),
}


# Stages that only sample and score (no optimizer): `pipeline.sampling_param_dtype` stores
# their weights in a narrower dtype than the trainers' float32 master weights.
SAMPLING_STAGES = ("sl_generate", "sample_pairs", "feedback", "eval")


def _exists(workdir: str, *paths: str) -> bool:
  return all(os.path.exists(os.path.join(workdir, p)) for p in paths)


# Finished-output checks (files every stage writes last, after its main outputs).
DONE = {
    "sl_generate": ("sl_generate/report.json", "sl_generate/sl_train.jsonl"),
    "sl_train": ("sl_train/summary.json", "sl_train/export_hf"),
    "sample_pairs": ("sample_pairs/report.json",),
    "feedback": ("feedback/report.json",),
    "pm_train": ("pm_train/pm/pm.json",),
    "rl_train": ("rl_train/summary.json", "rl_train/export_hf"),
    "po_train": ("po_train/summary.json", "po_train/export_hf"),
    "red_team_generate": ("red_team_generate/prompts.jsonl",),
    "red_team_attack": ("red_team_attack/report.json",),
    "eval": ("eval/report.json",),
    "report": ("report/report.md",),
}


def done(stage: str, workdir: str) -> bool:
  return _exists(workdir, *DONE[stage])


def _has_records(path: str) -> bool:
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8", errors="replace") as f:
    return any(line.strip() for line in f)


def _algorithm_text(p) -> str:
  return str(p.rl.algorithm) if "rl" in p else "ppo"  # configs from before the field: PPO


def rl_algorithms(p) -> list[str]:
  """pipeline.rl.algorithm as a list: 'ppo', 'dpo', 'ipo' or e.g. 'ppo,dpo' (PPO and one
  preference-optimisation loss side by side)."""
  algorithm = _algorithm_text(p)
  names = [a.strip() for a in str(algorithm).split(",") if a.strip()]
  unknown = [a for a in names if a not in RL_ALGORITHMS]
  if not names or unknown:
    raise ConfigError(f"pipeline.rl.algorithm={algorithm!r}: expected one or more of "
                      f"{', '.join(RL_ALGORITHMS)} (comma-separated)")
  if sum(RL_ALGORITHMS[a] == "po_train" for a in names) > 1:
    raise ConfigError(f"pipeline.rl.algorithm={algorithm!r}: one preference-optimisation "
                      "loss per workdir (po_train has one folder); run the other in a copy")
  return list(dict.fromkeys(names))


def rounds(p) -> int:
  n = int(p.get("rounds", 1))
  if n < 1:
    raise ConfigError(f"pipeline.rounds must be >= 1, got {n}")
  return n


def round_dir(workdir: str, r: int) -> str:
  """Round r's workdir: WORKDIR itself for the first round, WORKDIR/round_<r> after."""
  return workdir if r == 1 else os.path.join(workdir, f"round_{r}")


def rl_stage(p) -> str:
  """The stage whose export is a round's policy (one RL algorithm when rounds > 1)."""
  algos = rl_algorithms(p)
  if rounds(p) > 1 and len(algos) > 1:
    raise ConfigError(f"pipeline.rounds={rounds(p)} with pipeline.rl.algorithm="
                      f"{_algorithm_text(p)!r}: iterated rounds follow one policy; pick one "
                      "algorithm")
  return RL_ALGORITHMS[algos[0]]


def red_team_attacks(p) -> int:
  """Prompts proposed per later round (0 = no red teaming); ConfigError where it cannot run."""
  rt = p.get("red_team", None)
  n = int(rt.attacks) if rt is not None else 0
  if n < 0:
    raise ConfigError(f"pipeline.red_team.attacks must be >= 0, got {n}")
  if n and rounds(p) < 2:
    raise ConfigError(f"pipeline.red_team.attacks={n} red-teams the policy between rounds: set "
                      "pipeline.rounds >= 2")
  if n and rl_stage(p) != "rl_train":
    raise ConfigError(f"pipeline.red_team.attacks={n} feeds the attacks to PPO's prompts: "
                      f"pipeline.rl.algorithm={_algorithm_text(p)!r} has no prompts to feed")
  return n


def rl_prompts_file(workdir: str, r: int) -> str:
  """Round r's PPO prompts when red teaming: round r's red_team_attack output."""
  return os.path.join(round_dir(workdir, r), "red_team_attack", "prompts.jsonl")


def check_rounds(p, workdir: str) -> None:
  """ConfigError when the workdir holds a round beyond pipeline.rounds (a run with more rounds:
  its later rounds would be silently left out of the comparison)."""
  n = rounds(p)
  if not os.path.isdir(workdir):
    return
  extra = sorted(int(d[len("round_"):]) for d in os.listdir(workdir)
                 if d.startswith("round_") and d[len("round_"):].isdigit()
                 and int(d[len("round_"):]) > n)
  if extra:
    raise ConfigError(f"pipeline.rounds={n} but {os.path.join(workdir, f'round_{extra[-1]}')} "
                      f"exists: this workdir ran {extra[-1]} rounds. Set pipeline.rounds="
                      f"{extra[-1]} (or more), or use another workdir; nothing was changed")


def _po_algorithm(p) -> str:
  return next((a for a in rl_algorithms(p) if RL_ALGORITHMS[a] == "po_train"), "")


def _po_loss_run(workdir: str) -> str:
  """The loss a finished po_train in this workdir ran with ('dpo', 'ipo', 'hard'), or ''."""
  import json
  path = os.path.join(workdir, "po_train", "summary.json")
  if not os.path.exists(path):
    return ""
  with open(path, encoding="utf-8") as f:
    return str(json.load(f).get("loss", ""))


def compared_stages(config, workdir: str) -> str:
  """eval.stages for the pipeline: base, sl, rl (PPO) and the preference-optimised policy under
  its algorithm's name (those whose checkpoint exists), or ''."""
  if config.eval.stages or not config.pipeline.compare_stages:
    return config.eval.stages
  po_name = _po_algorithm(config.pipeline) or _po_loss_run(workdir) or "po"
  candidates = [("sl", workdir, "sl_train")]
  for r in range(1, rounds(config.pipeline) + 1):
    suffix = "" if r == 1 else f"_{r}"
    candidates += [("rl" + suffix, round_dir(workdir, r), "rl_train"),
                   (po_name + suffix, round_dir(workdir, r), "po_train")]
  found = [("base", config.model.checkpoint)] + [
      (name, os.path.join(folder, stage, "export_hf")) for name, folder, stage in candidates
      if os.path.isdir(os.path.join(folder, stage, "export_hf"))]
  return ",".join(f"{n}={c}" for n, c in found) if len(found) > 1 else ""


def _eval_has_work(config, workdir: str) -> bool:
  e = config.eval
  return bool(e.comparisons or e.hhh or e.mc_files or e.feedback_labels
              or compared_stages(config, workdir))


def _copy(value):
  return value.copy_and_resolve_references() if isinstance(value, ml_collections.ConfigDict) \
      else value


def stage_config(config, stage: str, workdir: str, round_index: int = 1
                 ) -> ml_collections.ConfigDict:
  """The config `stage` runs with: configs/<stage>.py's layout, the pipeline's shared fields
  (seed, base model, constitution, mesh, distributed), the pipeline's section for the stage
  (config.<stage>) and optimizer (config.optim.<stage>), and the paths between stages. In round
  r > 1 (`round_index`) the stage runs in `round_dir(workdir, r)` from round r - 1's policy and
  PM, with seed + r - 1."""
  if round_index > 1:
    return _round_stage_config(config, stage, workdir, round_index)
  c = config_defaults.base_config(stage)
  c.seed = config.seed
  c.model = config.model.copy_and_resolve_references()
  c.conversation = config.conversation.copy_and_resolve_references()
  for field in SHARED_FIELDS[stage]:
    value = config.optim[stage] if field == "optim" else config[field]
    c[field] = _copy(value)
  c[stage] = _copy(config[stage])
  if stage in SAMPLING_STAGES and config.pipeline.sampling_param_dtype:
    c.model.param_dtype = config.pipeline.sampling_param_dtype
  s = c[stage]
  path = lambda *p: os.path.join(workdir, *p)  # noqa: E731
  sl_export = path("sl_train", "export_hf")
  if stage == "sl_train":
    s.data = s.data or path("sl_generate", "sl_train.jsonl")
    held_out = path("sl_generate", "sl_eval.jsonl")
    if not s.eval_data and _has_records(held_out):
      s.eval_data = held_out
  elif stage == "sample_pairs":
    c.model.checkpoint = sl_export
  elif stage == "feedback":
    s.pairs = s.pairs or config.sample_pairs.output or path("sample_pairs", "pairs.jsonl")
  elif stage == "pm_train":
    c.model.checkpoint = config.pipeline.pm_init or config.model.checkpoint
    if not s.ai_labels:
      labels = config.feedback.output or path("feedback", "labels.jsonl")
      if _has_records(labels):
        s.ai_labels = labels
      elif s.human_comparisons:
        print(f"pipeline: {labels} holds no AI labels (every pair flagged?); pm_train trains on "
              "pm_train.human_comparisons only", flush=True)
      else:
        raise ConfigError(f"pm_train has no data: {labels} holds no AI labels (feedback skips "
                          "flagged pairs) and pm_train.human_comparisons is not set")
  elif stage == "rl_train":
    c.model.checkpoint = sl_export
    s.pm = s.pm or path("pm_train", "pm")
  elif stage == "po_train":
    c.model.checkpoint = sl_export
    s.labels = s.labels or config.feedback.output or path("feedback", "labels.jsonl")
    algorithm = _po_algorithm(config.pipeline)
    family = ("ipo",) if algorithm == "ipo" else ("dpo", "hard")
    if algorithm and s.loss not in family:
      if s.loss != config_defaults.PO_DEFAULT_LOSS:
        raise ConfigError(f"po_train.loss={s.loss!r} contradicts pipeline.rl.algorithm="
                          f"{_algorithm_text(config.pipeline)!r}")
      s.loss = algorithm
  elif stage == "eval":
    last_pm = os.path.join(round_dir(workdir, rounds(config.pipeline)), "pm_train", "pm")
    s.pm = s.pm or (last_pm if os.path.isdir(last_pm) else path("pm_train", "pm"))
    s.stages = compared_stages(config, workdir)
  return c


def _round_stage_config(config, stage: str, workdir: str, r: int) -> ml_collections.ConfigDict:
  if stage not in ROUND_STAGES + RED_TEAM_STAGES:
    raise ValueError(f"{stage} does not run in later rounds")
  here = round_dir(workdir, r)
  c = (_red_team_config(config, stage) if stage in RED_TEAM_STAGES
       else stage_config(config, stage, here))
  c.seed = config.seed + r - 1
  before = round_dir(workdir, r - 1)
  policy = os.path.join(before, rl_stage(config.pipeline), "export_hf")
  if stage in ("sample_pairs", "rl_train", "po_train", "red_team_attack"):
    c.model.checkpoint = policy
  elif stage == "pm_train":  # continue the previous round's PM (head included) on new labels
    c.model.checkpoint = os.path.join(before, "pm_train", "pm")
  # this round's own files, whatever paths the first round was given
  labels = os.path.join(here, "feedback", "labels.jsonl")
  if stage in ("sample_pairs", "feedback"):
    c[stage].output = ""
  if stage == "feedback":
    c.feedback.pairs = os.path.join(here, "sample_pairs", "pairs.jsonl")
  elif stage == "pm_train":
    c.pm_train.ai_labels = labels
  elif stage == "po_train":
    c.po_train.labels = labels
  elif stage == "red_team_attack":  # round r - 1's policy against round r's PM
    c.red_team_attack.pm = os.path.join(here, "pm_train", "pm")
    c.red_team_attack.candidates = os.path.join(here, "red_team_generate", "prompts.jsonl")
    c.red_team_attack.base_prompts = (rl_prompts_file(workdir, r - 1) if r > 2
                                      else config.rl_train.prompts)
    c.red_team_attack.id_prefix = f"attack-r{r}-"
    c.red_team_attack.keep = int(config.pipeline.red_team.keep)
  elif stage == "rl_train" and red_team_attacks(config.pipeline):
    c.rl_train.prompts = rl_prompts_file(workdir, r)
  return c


def _red_team_config(config, stage: str) -> ml_collections.ConfigDict:
  """The red-team stages' configs: configs/<stage>.py's layout, the pipeline's shared fields
  and section; the proposer is the base model, the number of proposals pipeline.red_team's."""
  c = config_defaults.base_config(stage)
  c.model = config.model.copy_and_resolve_references()
  c.conversation = config.conversation.copy_and_resolve_references()
  for field in SHARED_FIELDS[stage]:
    c[field] = _copy(config[field])
  c[stage] = _copy(config[stage])
  if stage == "red_team_generate":
    c.red_team_generate.num_prompts = int(config.pipeline.red_team.attacks)
  return c


def plan(config, workdir: str) -> list[tuple[str, str, int]]:
  """(step name, stage, round) in the order they run: the first round's stages, the later
  rounds' ROUND_STAGES (named round_<r>/<stage>), then eval and report."""
  p = config.pipeline
  selected = selected_stages(p)
  n = rounds(p)
  if n > 1:
    rl_stage(p)  # one algorithm
  tail = [s for s in selected if s in ("eval", "report")]
  steps = [(s, s, 1) for s in selected if s not in tail]
  attacks = red_team_attacks(p)
  for r in range(2, n + 1):
    for s in selected:
      if s == "rl_train" and attacks:
        steps += [(f"round_{r}/{t}", t, r) for t in RED_TEAM_STAGES]
      if s in ROUND_STAGES:
        steps.append((f"round_{r}/{s}", s, r))
  return steps + [(s, s, 1) for s in tail]


def selected_stages(p) -> list[str]:
  def check(name, field):
    if name not in STAGES:
      raise ConfigError(f"pipeline.{field}: unknown stage {name!r}; stages: {', '.join(STAGES)}")
  names = [s.strip() for s in p.stages.split(",") if s.strip()] if p.stages else list(STAGES)
  for n in names:
    check(n, "stages")
  for field in ("stop_after", "rerun_from"):
    if p[field]:
      check(p[field], field)
  wanted = {RL_ALGORITHMS[a] for a in rl_algorithms(p)}
  unwanted = [n for n in names if n in RL_ALGORITHMS.values() and n not in wanted]
  if unwanted and p.stages:
    raise ConfigError(f"pipeline.stages lists {', '.join(unwanted)} but pipeline.rl.algorithm="
                      f"{_algorithm_text(p)!r} does not run it")
  out = [s for s in STAGES if s in names and s not in unwanted]
  if p.stop_after:
    out = [s for s in out if STAGES.index(s) <= STAGES.index(p.stop_after)]
  return out
