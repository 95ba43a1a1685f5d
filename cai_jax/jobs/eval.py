"""Job `eval`: the evaluation suite for a preference model, the AI labeller and MC files.

Sections (each runs when its config field is set; every input file is read and validated
before any model loads):
- `eval.comparisons` (chosen/rejected jsonl(.gz), HH-RLHF format): preference-model accuracy
  (r_chosen > r_rejected), mean BT loss, calibration of sigmoid(r_chosen - r_rejected) (ECE
  and a reliability diagram with counts per bin).
- `eval.hhh` (HHH-format MC files whose lines have `text_correct` / `text_incorrect`): the same
  with the correct transcript as the better one.
- `eval.feedback_labels` + `eval.human_file`: the AI labeller against human labels (accuracy:
  how often the label prefers the human-chosen answer; calibration of that probability).
- `eval.mc_files` (prompt / corrects / incorrects): multiple-choice accuracy of
  `config.model` (the eval_mc scorer).
- `eval.stages` ('base=CKPT,sl=CKPT,rl=CKPT': any checkpoints, the first is the Elo reference):
  the stages compared on held-out prompts (`cai_jax.eval.stage_compare`): each answers the
  red-team prompts (`eval.red_team_prompts`, default the held-out 'red_team:test') and the
  helpfulness prompts (`eval.helpful_prompts`); the AI judge (`eval.judge`, default
  config.model: the feedback model) compares every pair of stages on every prompt in both
  orders under `eval.judge_principles` principles of `eval.harmless_constitution` /
  `eval.helpful_constitution`; Elo scores and win rates with bootstrap intervals over prompts,
  PM scores of every answer (when a PM exists), answer lengths and the PM's calibration against
  the judge. Outputs: answers/<stage>.jsonl and judgements.jsonl (appended; a rerun skips what
  is written), pm_scores.json, and report.json's "stages" section. With several processes
  (`distributed`) each samples the answers and judges the pairs it owns (`record_split`; answer
  keys from (seed, stage, answer id)) and process 0 merges them; the PM scores on the whole mesh.
The preference model is `eval.pm` (a folder written by pm_train; default WORKDIR/pm_train/pm).
Calibration (see `cai_jax.eval.calibration`): each pair counted from both sides, `num_bins`
equal-width bins over [0, 1].

Outputs under WORKDIR/eval/: report.json (every number), `<section>_<stem>.png` reliability
diagrams, and `pm_<stem>.json` per scored file (rewards per pair).
"""

from __future__ import annotations

import hashlib
import json
import os

import jax

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.data.sources import read_hh_comparisons
from cai_jax.eval import calibration, pm_eval, plots
from cai_jax.eval.mc import MCScorer, read_mc_file
from cai_jax.jobs.common import load_model, progress, sampling_mesh, weights_options
from cai_jax.model import heads
from cai_jax.train import pm as pm_lib


def _files(value: str) -> list[str]:
  return [f.strip() for f in (value or "").split(",") if f.strip()]


def _stem(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".gz", ".jsonl", ".json"):
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  return name


def _pm_folder(e, workdir: str) -> str:
  return e.pm or os.path.join(workdir, "pm_train", "pm")


def _pm_version(folder: str) -> str:
  """Names, sizes and modification times of a PM folder's files: changes when it is retrained."""
  entries = []
  for root, _, files in os.walk(folder):
    for name in sorted(files):
      st = os.stat(os.path.join(root, name))
      entries.append(f"{os.path.relpath(os.path.join(root, name), folder)}:{st.st_size}:"
                     f"{st.st_mtime_ns}")
  return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]


def _answer_fingerprint(record: dict) -> str:
  """What a PM score depends on: the prompt and the answer text."""
  return hashlib.sha256(f"{record['prompt']}\0{record['completion']}".encode()).hexdigest()[:20]


def check_stages(config) -> dict:
  """Read and validate everything the stage comparison needs (stages, sampling settings, prompt
  sets, judge constitutions) without loading a model, so that a bad setting fails at once."""
  from cai_jax.constitution.loading import load_constitution
  from cai_jax.eval import stage_compare as SC
  from cai_jax.jobs.common import sampling_strategy

  e = config.eval
  stages = SC.parse_stages(e.stages)
  for field in ("answer_max_tokens", "answer_batch_size", "answer_block_size",
                "max_prompt_length", "chunk_size", "judge_batch_size", "judge_principles"):
    if e[field] < 1:
      raise ConfigError(f"eval.{field} must be >= 1, got {e[field]}")
  if e.num_prompts < 0 or e.num_bootstrap < 0 or not 0 < e.confidence < 1:
    raise ConfigError("eval.num_prompts and eval.num_bootstrap must be >= 0 and "
                      "eval.confidence in (0, 1)")
  from cai_jax.constitution import policy_layout
  policy_layout.prefix_name(config)  # a bad value stops here, before any model loads
  strategy = sampling_strategy(e, "eval", "answer_temperature", "answer_top_k", "answer_top_p")
  sets = {"harmless": SC.eval_prompts(e.red_team_prompts, e.num_prompts),
          "helpful": SC.eval_prompts(e.helpful_prompts, e.num_prompts)}
  judges = {"harmless": load_constitution(e.harmless_constitution),
            "helpful": load_constitution(e.helpful_constitution)}
  for set_name, c in judges.items():
    if e.judge_principles > len(c.mc_principles):
      raise ConfigError(f"eval.judge_principles={e.judge_principles}, but constitution "
                        f"{c.name!r} ({set_name} judge) has {len(c.mc_principles)} principles")
  return {"stages": stages, "strategy": strategy, "sets": sets, "judges": judges}


def run_stages(config, workdir: str, main: bool, checked: dict | None = None) -> dict:
  """The stage comparison (see the module docstring); returns report.json's "stages".
  `checked`: `check_stages(config)`'s result when the caller has already validated."""
  from cai_jax.cai import feedback as F
  from cai_jax.constitution import prompts as P
  from cai_jax.data.jsonl import read_jsonl
  from cai_jax.eval import stage_compare as SC
  from cai_jax.constitution import policy_layout
  from cai_jax.jobs.common import conversation_format
  from cai_jax.jobs.record_split import SplitOutput
  from cai_jax.sampling.record_keys import record_keys
  from cai_jax.sampling.sampler import Sampler

  e = config.eval
  checked = checked or check_stages(config)
  stages, strategy, sets, judges = (checked[k] for k in ("stages", "strategy", "sets", "judges"))
  names = [s.name for s in stages]
  out_dir = os.path.join(workdir, "eval")
  answers_dir = os.path.join(out_dir, "answers")
  os.makedirs(answers_dir, exist_ok=True)
  m = config.model
  wanted = [(set_name, r) for set_name in SC.SETS for r in sets[set_name]]
  mesh = sampling_mesh(config)

  # 1. answers, stage by stage (one model in memory at a time)
  for stage in stages:
    path = os.path.join(answers_dir, f"{stage.name}.jsonl")
    split = SplitOutput(path, f"eval/answers/{stage.name}")
    done = split.finished_ids()
    todo = [(s, r) for s, r in wanted if SC.answer_id(s, r.id) not in done]
    print(f"eval: stage {stage.name} ({stage.checkpoint}): {len(wanted) - len(todo)} answers "
          f"written, {len(todo)} to sample", flush=True)
    todo = split.mine(todo, id_of=lambda x: SC.answer_id(x[0], x[1].id))
    if not todo:
      split.finish([SC.answer_id(s, r.id) for s, r in wanted])
      continue
    model = load_model(config, mesh, checkpoint=stage.checkpoint)
    fmt = conversation_format(config, model.tokenizer)
    sampler = Sampler(model.config, model.params, model.tokenizer,
                      max_prompt_length=e.max_prompt_length,
                      max_batch=e.answer_batch_size, chunk_size=e.chunk_size,
                      eos_ids=fmt.stop_ids, mesh=mesh)
    layout = policy_layout.from_config(config, fmt)  # what every policy-facing stage uses
    prefix = layout.prefill(sampler)
    bar = progress(len(todo), f"answers {stage.name}", "answer") if e.progress and main else None
    try:
      for b in range(0, len(todo), e.answer_block_size):
        batch = todo[b:b + e.answer_block_size]
        rows = [layout.rest(r.prompt) for _, r in batch]
        keys = record_keys(config.seed, [f"{stage.name}/{SC.answer_id(s, r.id)}"
                                         for s, r in batch])
        out = sampler.generate(rows, max_new_tokens=e.answer_max_tokens,
                               strategy=strategy, keys=keys, stop=P.RESPONSE_STOPS,
                               prefix=prefix)
        split.append([
            {"id": SC.answer_id(s, r.id), "set": s, "stage": stage.name,
             "checkpoint": stage.checkpoint, "prompt_id": r.id, "category": r.category,
             "prompt": r.prompt, "completion": text, "finish_reason": reason,
             "num_tokens": int(n), "truncated": bool(t)}
            for (s, r), text, reason, n, t in zip(batch, out.texts, out.finish_reasons,
                                                  out.num_tokens, out.truncated)])
        if bar is not None:
          bar.update(len(batch))
    finally:
      if bar is not None:
        bar.close()
    del model, sampler, prefix
    split.finish([SC.answer_id(s, r.id) for s, r in wanted])
  keys = {SC.answer_id(s, r.id) for s, r in wanted}
  answers = {st: [obj for _, obj in read_jsonl(os.path.join(answers_dir, f"{st}.jsonl"))
                  if obj["id"] in keys] for st in names}
  texts = {st: {r["id"]: r["completion"] for r in recs} for st, recs in answers.items()}

  # 2. judgements: every pair of stages on every prompt, by the AI judge
  judge_path = os.path.join(out_dir, "judgements.jsonl")
  judge_split = SplitOutput(judge_path, "eval/judgements")
  done = judge_split.finished_ids()
  todo_sets, wanted_judgements, tie_ids, ask_ids = {}, set(), [], []
  for set_name in SC.SETS:
    ask, ties = SC.judgement_pairs(set_name, names, sets[set_name], texts)
    wanted_judgements |= {p.id for p in ask} | {t["id"] for t in ties}
    tie_ids += [t["id"] for t in ties]
    ask_ids += [p.id for p in ask]
    if main and [t for t in ties if t["id"] not in done]:
      judge_split.append([t for t in ties if t["id"] not in done])
    todo_sets[set_name] = judge_split.mine([p for p in ask if p.id not in done])
  n_todo = sum(len(v) for v in todo_sets.values())
  judge_ckpt = e.judge or m.checkpoint
  print(f"eval: {n_todo} pairs of answers to judge with {judge_ckpt}, "
        f"{e.judge_principles} principles each, both orders", flush=True)
  if n_todo:
    model = load_model(config, mesh, checkpoint=judge_ckpt)
    scorer = MCScorer(model.config, model.params, model.tokenizer, max_length=e.mc_max_length,
                      tokens_per_batch=e.mc_tokens_per_batch, mesh=mesh)
    bar = progress(n_todo, "judge", "pair") if e.progress and main else None
    try:
      for set_name, todo in todo_sets.items():
        labeller = F.FeedbackLabeller(
            judges[set_name], scorer,
            F.FeedbackSettings(mode="mc", num_principles=e.judge_principles, both_orders=True,
                               seed=config.seed), tokenizer=model.tokenizer,
            fmt=conversation_format(config, model.tokenizer))
        for b in range(0, len(todo), e.judge_batch_size):
          batch = todo[b:b + e.judge_batch_size]
          records = labeller.label(batch)
          judge_split.append([SC.judgement_record(set_name, r) for r in records])
          if bar is not None:
            bar.update(len(batch))
    finally:
      if bar is not None:
        bar.close()
    del model, scorer
  judge_split.finish(tie_ids + ask_ids)  # the order one process writes them in
  judgements = [obj for _, obj in read_jsonl(judge_path) if obj["id"] in wanted_judgements]

  # 3. preference-model scores of every answer (kept in pm_scores.json: a rerun scores only
  # answers it has no score for, and loads no PM when there are none)
  pm_scores = None
  folder = _pm_folder(e, workdir)
  if os.path.exists(os.path.join(folder, "pm.json")):
    scores_path = os.path.join(out_dir, "pm_scores.json")
    version = _pm_version(folder)
    cached = {}
    if os.path.exists(scores_path):
      with open(scores_path) as f:
        old = json.load(f)
      if old.get("pm") == os.path.abspath(folder) and old.get("pm_version") == version:
        cached = old.get("fingerprints", {})
    pm_scores = {st: {} for st in names}
    missing = []
    for st in names:
      for r in answers[st]:
        fp = _answer_fingerprint(r)
        if fp in cached:
          pm_scores[st][r["id"]] = cached[fp]
        else:
          missing.append((st, r))
    if missing:
      parallel.maybe_initialize_distributed(config.distributed)
      mesh = parallel.make_mesh(dict(config.mesh))
      loaded = heads.load_pm(folder, shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh),
                             **weights_options(m))
      scorer = pm_eval.PMScorer(loaded, mesh, batch_size=e.batch_size, max_length=e.max_length,
                                min_length=e.min_length)
      rewards, _ = scorer.score_responses([(r["prompt"], r["completion"]) for _, r in missing])
      for (st, r), x in zip(missing, rewards):
        pm_scores[st][r["id"]] = float(x)
        cached[_answer_fingerprint(r)] = float(x)
      del loaded, scorer
    print(f"eval: PM scores for {sum(map(len, pm_scores.values()))} answers "
          f"({len(missing)} newly scored)", flush=True)
    if main and missing:
      write_json_atomic(scores_path, {"pm": os.path.abspath(folder), "pm_version": version,
                                      "scores": pm_scores, "fingerprints": cached})
  else:
    print(f"eval: no preference model at {folder}: answers are not PM-scored", flush=True)

  summary = SC.summarize(names, answers, judgements, pm_scores, num_bootstrap=e.num_bootstrap,
                         confidence=e.confidence, seed=config.seed, num_bins=e.num_bins)
  summary.update({
      "stages": [{"name": s.name, "checkpoint": s.checkpoint} for s in stages],
      "sets": {s: {"prompts": spec, "n": len(sets[s]),
                   "judge_constitution": judges[s].name}
               for s, spec in (("harmless", e.red_team_prompts),
                               ("helpful", e.helpful_prompts))},
      "judge": judge_ckpt, "judge_principles": e.judge_principles,
      "policy_prefix": policy_layout.prefix_name(config),
      "sampling": {"temperature": e.answer_temperature, "top_k": e.answer_top_k,
                   "top_p": e.answer_top_p, "max_new_tokens": e.answer_max_tokens},
      "pm": os.path.abspath(folder) if pm_scores is not None else None,
      "num_answers": {st: len(answers[st]) for st in names},
      "num_judgements": len(judgements)})
  for set_name, table in summary["elo"].items():
    print(f"eval: {set_name} Elo (vs {names[0]}): " + ", ".join(
        f"{p} {table['elo'][p]:+.0f} [{table['elo_low'][p]:+.0f}, {table['elo_high'][p]:+.0f}]"
        for p in names), flush=True)
  if main and "pm_vs_judge" in summary:
    summary["pm_vs_judge"]["reliability_png"] = plots.reliability_diagram(
        summary["pm_vs_judge"]["calibration"], os.path.join(out_dir, "pm_vs_judge.png"),
        title="preference model vs the AI judge (held-out answer pairs)",
        xlabel="PM predicted P(answer better)", ylabel="judge's mean P(answer better)")
  return summary


def run(config, workdir: str) -> dict:
  e = config.eval
  comparisons, hhh, mc_files = _files(e.comparisons), _files(e.hhh), _files(e.mc_files)
  if bool(e.feedback_labels) != bool(e.human_file):
    raise ConfigError("labeller agreement needs both eval.feedback_labels and eval.human_file")
  if not (comparisons or hhh or mc_files or e.feedback_labels or e.stages):
    raise ConfigError("nothing to evaluate: set eval.stages, eval.comparisons, eval.hhh, "
                      "eval.mc_files and/or eval.feedback_labels + eval.human_file")
  if e.num_bins < 1:
    raise ConfigError(f"eval.num_bins={e.num_bins} must be >= 1")
  out_dir = os.path.join(workdir, "eval")
  # Read and validate every input before loading a model.
  pm_sets = ([("comparisons", p, prefs.read_human_comparisons(p, 0, randomize_sides=False))
              for p in comparisons]
             + [("hhh", p, prefs.read_text_pairs(p)) for p in hhh])
  mc_sets = [(p, read_mc_file(p)) for p in mc_files]
  labeller = None
  if e.feedback_labels:
    from cai_jax.cai.feedback import read_feedback_file
    labeller = (read_feedback_file(e.feedback_labels), read_hh_comparisons(e.human_file))

  stages_checked = check_stages(config) if e.stages else None

  report: dict = {}
  parallel.maybe_initialize_distributed(config.get("distributed"))  # before anything uses JAX
  main = jax.process_index() == 0
  if pm_sets:
    folder = _pm_folder(e, workdir)
    parallel.maybe_initialize_distributed(config.distributed)
    mesh = parallel.make_mesh(dict(config.mesh))
    loaded = heads.load_pm(folder, shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh),
                           **weights_options(config.model))
    scorer = pm_eval.PMScorer(loaded, mesh, batch_size=e.batch_size, max_length=e.max_length,
                              min_length=e.min_length)
    report["pm"] = {"folder": os.path.abspath(folder), "settings": loaded.settings,
                    "max_length": scorer.max_length, "append_eos": scorer.append_eos}
    for section, path, pairs in pm_sets:
      bar = progress(len(pairs), os.path.basename(path), "pair") if e.progress and main else None
      try:
        rewards, truncated = scorer.score(pairs, progress=bar)
      finally:
        if bar is not None:
          bar.close()
      result = {"file": os.path.abspath(path), "num_truncated": truncated,
                **pm_eval.pair_report(rewards[:, 0], rewards[:, 1], e.num_bins)}
      stem = _stem(path)
      if main:
        result["reliability_png"] = plots.reliability_diagram(
            result["calibration"], os.path.join(out_dir, f"{section}_{stem}.png"),
            title=f"preference model on {os.path.basename(path)}",
            xlabel="predicted P(answer preferred)", ylabel="observed frequency it is the better")
        write_json_atomic(os.path.join(out_dir, f"pm_{stem}.json"), {
            "file": os.path.abspath(path),
            "items": [{"id": x.id, "r_better": float(r[0]), "r_worse": float(r[1])}
                      for x, r in zip(pairs, rewards)]})
      report.setdefault(section, {})[path] = result
      print(f"{section} {path}: PM accuracy {result['accuracy']:.4f} over {result['n']} pairs, "
            f"ECE {result['ece']:.4f}", flush=True)

  if labeller is not None:
    labels, human = labeller
    result = {"labels": os.path.abspath(e.feedback_labels),
              "human_file": os.path.abspath(e.human_file),
              **pm_eval.labeller_agreement(labels, human, e.num_bins, where=e.feedback_labels)}
    if main:
      result["reliability_png"] = plots.reliability_diagram(
          result["calibration"], os.path.join(out_dir, f"labeller_{_stem(e.human_file)}.png"),
          title=f"AI labels vs human choices ({os.path.basename(e.human_file)})",
          xlabel="AI label P(answer better)", ylabel="observed frequency humans chose it")
    report["labeller"] = result
    print(f"labeller vs {e.human_file}: accuracy {result['accuracy']:.4f} over "
          f"{result['matched']} matched pairs, ECE {result['ece']:.4f}", flush=True)

  if mc_sets:
    mesh = sampling_mesh(config)
    model = load_model(config, mesh)
    mc = MCScorer(model.config, model.params, model.tokenizer, max_length=e.mc_max_length,
                  tokens_per_batch=e.mc_tokens_per_batch, mesh=mesh)
    for path, items in mc_sets:
      bar = progress(len(items), os.path.basename(path), "item") if e.progress and main else None
      try:
        r = mc.score(items, progress=bar)
      finally:
        if bar is not None:
          bar.close()
      # Calibration as in the paper's figure 9: each option's probability among its item's
      # options (softmax of the summed log-probabilities) binned against whether it is correct.
      cal = calibration.mc_calibration(r.scores, [it.is_correct for it in items], e.num_bins)
      result = {"file": os.path.abspath(path), "n": len(items), "accuracy": r.accuracy,
                "num_truncated": r.num_truncated, "checkpoint": config.model.checkpoint, **cal}
      if main:
        result["reliability_png"] = plots.reliability_diagram(
            cal["calibration"], os.path.join(out_dir, f"mc_{_stem(path)}.png"),
            title=f"{os.path.basename(os.path.normpath(str(config.model.checkpoint)))} on "
                  f"{os.path.basename(path)}",
            xlabel="predicted P(option), softmax over the item's options",
            ylabel="observed frequency the option is correct")
      report.setdefault("mc", {})[path] = result
      print(f"mc {path}: accuracy {r.accuracy:.4f} over {len(items)} items, mean P(correct) "
            f"{cal['mean_p_correct']:.4f}, ECE {cal['ece']:.4f}", flush=True)

  if e.stages:
    report["stages"] = run_stages(config, workdir, main, stages_checked)

  if main:
    write_json_atomic(os.path.join(out_dir, "report.json"), report)
  return report
