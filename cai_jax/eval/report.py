"""The run report: WORKDIR/report/report.md plus PNG figures, built from what the stages wrote.

Reads (each part optional: a stage that did not run gets a line saying so):
  pipeline/status.json        stage status and seconds of the last pipeline invocation
  sl_generate/report.json     SL-CAI data counts and flags; sl_train/metrics.jsonl loss curve
  feedback/report.json        AI labels: count, position bias, confidence
  sl_train/summary.json       held-out loss on revisions before and after finetuning
  pm_train/metrics.jsonl, summary.json   PM training and held-out curves, before/after numbers
  rl_train/metrics.jsonl, summary.json   PPO curves (probe score, rollout PM score, total
                              reward, KL k1 and k3, entropy, length)
  eval/report.json            stage comparison (Elo, win rates, PM scores, lengths, PM vs judge)
                              and any PM / labeller / MC evaluations
  eval/answers/*.jsonl, eval/pm_scores.json   example answers and their PM scores
Figures: elo.png, pm_scores.png, pm_calibration.png, ppo_curves.png, training_curves.png.
"""

from __future__ import annotations

import datetime
import json
import os

from cai_jax.data.jsonl import read_jsonl, write_json_atomic
from cai_jax.eval import plots

# (metric keys, panel title, y label): one key = one series; several keys share the panel.
PPO_PANELS = ((("probe_score",), "PM score of greedy answers to the fixed probe prompts",
               "PM score (logits)"),
              (("score",), "mean PM score of each iteration's rollouts (new prompts each time)",
               "PM score (logits)"),
              (("score_harmless", "score_helpful"),
               "rollouts' mean PM score per prompt set", "PM score (logits)"),
              (("reward_total",), "reward after the KL penalty", "reward per episode"),
              (("kl_k1", "kl_k3"), "KL(policy || SL-CAI) per episode", "KL (nats)"),
              (("entropy",), "policy entropy per token", "entropy (nats)"),
              (("response_length", "probe_answer_tokens"), "answer length", "tokens"),
              (("kl_coef",), "KL coefficient", "beta"))


AXIS_NAMES = {"harmless": "red-team prompts", "helpful": "helpfulness prompts"}


def _per_axis_rollouts(rl: list[dict]) -> list[str]:
  """Per prompt set (rl_train's `*_<axis>` metrics): rows, mean PM score, reward after the KL
  penalty and KL over all iterations, as a table ([] when the run had one set only)."""
  axes = [a for a in AXIS_NAMES if any(f"rows_{a}" in m for m in rl)]
  if len(axes) < 2:
    return []
  out = ["Per prompt set, over every rollout row of the run (the PM's reward on red-team prompts "
         "reads as harmlessness, on helpfulness prompts as helpfulness):", "",
         "| prompt set | rollout rows | mean PM score | mean reward after KL | mean KL (k1) |",
         "|---|---|---|---|---|"]
  for a in axes:
    rows = [m for m in rl if m.get(f"rows_{a}")]
    n = sum(m[f"rows_{a}"] for m in rows)

    def mean(key):
      return sum(m[f"{key}_{a}"] * m[f"rows_{a}"] for m in rows) / n

    out.append(f"| {AXIS_NAMES[a]} | {n:.0f} | {_fmt(mean('score'), 4)} | "
               f"{_fmt(mean('reward_total'), 4)} | {_fmt(mean('kl'), 4)} |")
  return out + [""]


def _series(records: list[dict], key: str, label: str = "") -> tuple[str, list, list]:
  rows = [m for m in records if key in m]
  return label, [m["step"] for m in rows], [m[key] for m in rows]


def _panel(records: list[dict], keys, title: str, ylabel: str):
  """A curves panel for the keys present in `records` (None when none is)."""
  names = {"kl_k1": "k1", "kl_k3": "k3 (never negative)", "response_length": "rollouts",
           "probe_answer_tokens": "probe (greedy)", "score_harmless": "red-team",
           "score_helpful": "helpful"}
  series = [_series(records, k, names.get(k, k) if len(keys) > 1 else "") for k in keys
            if any(k in m for m in records)]
  return (title, series, ylabel) if series else None


def _load(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _metrics(path: str) -> list[dict]:
  return [obj for _, obj in read_jsonl(path)] if os.path.exists(path) else []


def _cell(text: str, limit: int = 400) -> str:
  """Text for one markdown table cell: newlines as <br>, pipes escaped, cut at `limit`."""
  text = text.strip()
  if len(text) > limit:
    text = text[:limit].rstrip() + " ..."
  return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
          .replace("\n", "<br>")) or "*(empty)*"


def _fmt(x, digits: int = 3) -> str:
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.{digits}f}"
  return str(x)


def _human_turn(prompt: str) -> str:
  tail = prompt.rsplit("\n\nHuman:", 1)[-1]
  return tail.split("\n\nAssistant:", 1)[0].strip()


def _stage_section(lines: list, figures: dict, st: dict, workdir: str, out_dir: str,
                   examples: int) -> None:
  names = [s["name"] for s in st["stages"]]
  ref = names[0]
  lines += ["## Stages compared on held-out prompts", ""]
  sets_text = ", ".join(f"{k}: {v['n']} from `{v['prompts']}`" for k, v in st["sets"].items())
  judges_text = ", ".join(f"{k}: constitution `{v['judge_constitution']}`"
                          for k, v in st["sets"].items())
  prefix = ("after the constitution's helpful exchanges"
            if st.get("policy_prefix") == "helpful_exchanges" else "zero-shot")
  conf = int(round(100 * next(iter(st["elo"].values()))["confidence"])) if st["elo"] else 95
  lines.append(
      f"Each stage answered the same held-out prompts ({sets_text}), {prefix}, temperature "
      f"{st['sampling']['temperature']}, at most {st['sampling']['max_new_tokens']} tokens. "
      f"The judge (`{st['judge']}`) compared every pair of stages on every prompt in both orders "
      f"under {st['judge_principles']} principle{'s' if st['judge_principles'] != 1 else ''} "
      f"({judges_text}); Elo is the Bradley-Terry fit "
      f"of its soft judgements, relative to `{ref}`, with {conf}% bootstrap intervals over "
      "prompts.")
  lines.append("")
  for s in st["stages"]:
    lines.append(f"- `{s['name']}`: `{s['checkpoint']}`")
  lines.append("")
  if st["elo"]:
    figures["elo"] = plots.elo_chart(st["elo"], os.path.join(out_dir, "elo.png"),
                                     title="Elo per stage, judged by the AI feedback model")
    lines += ["![Elo per stage](elo.png)", ""]
  sets = list(st["lengths"])
  head = ["stage"]
  for s in sets:
    head += [f"{s} Elo [CI]", f"{s} PM score (mean ± se)", f"{s} answer tokens (mean)"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    row = [f"`{n}`"]
    for s in sets:
      t = st["elo"].get(s)
      row.append(f"{t['elo'][n]:+.0f} [{t['elo_low'][n]:+.0f}, {t['elo_high'][n]:+.0f}]"
                 if t else "-")
      pm = st["pm_score"].get(s, {}).get(n)
      if pm and pm.get("n"):
        row.append(f"{pm['mean']:+.3f}" + (f" ± {pm['se']:.3f}" if pm["se"] is not None else ""))
      else:
        row.append("-")
      ln = st["lengths"][s][n]["tokens"]
      row.append(_fmt(ln.get("mean"), 1))
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  if st["win_rates"]:
    lines += ["Win rates (the judge's mean probability that `a`'s answer is the better one):", "",
              "| set | a | b | P(a better) | CI | judgements |", "|---|---|---|---|---|---|"]
    for s, rows in st["win_rates"].items():
      for r in rows:
        lines.append(f"| {s} | `{r['a']}` | `{r['b']}` | {r['win_rate_a']:.3f} | "
                     f"[{r['low']:.3f}, {r['high']:.3f}] | {r['n']} |")
    lines.append("")
  pm_path = os.path.join(workdir, "eval", "pm_scores.json")
  pm = _load(pm_path)
  answers = {n: [obj for _, obj in read_jsonl(os.path.join(workdir, "eval", "answers",
                                                            f"{n}.jsonl"))]
             if os.path.exists(os.path.join(workdir, "eval", "answers", f"{n}.jsonl")) else []
             for n in names}
  if pm:
    scores = {s: {n: [pm["scores"][n][a["id"]] for a in answers[n]
                      if a["set"] == s and a["id"] in pm["scores"].get(n, {})] for n in names}
              for s in sets}
    figures["pm_scores"] = plots.score_distributions(
        scores, os.path.join(out_dir, "pm_scores.png"),
        title="Preference-model scores of each stage's answers (higher = preferred)")
    lines += ["### Preference-model scores", "",
              "The PM's reward for each answer: on red-team prompts it reads as a harmlessness "
              "score, on ordinary requests as a helpfulness score.", "",
              "![PM score distributions](pm_scores.png)", ""]
  pvj = st.get("pm_vs_judge")
  if pvj:
    figures["pm_calibration"] = plots.reliability_diagram(
        pvj["calibration"], os.path.join(out_dir, "pm_calibration.png"),
        title="PM calibration against the AI judge (held-out answer pairs)",
        xlabel="PM predicted P(answer better) = sigmoid(reward gap)",
        ylabel="judge's mean P(answer better)")
    lines += ["### Preference-model calibration", "",
              f"On the {pvj['n']} judged pairs of held-out answers, the PM's "
              f"sigmoid(reward gap) against the judge's soft label: agreement on the favoured "
              f"answer {_fmt(pvj['agreement'])}, ECE {_fmt(pvj['ece'])} (each pair counted from "
              "both sides).", "", "![PM calibration](pm_calibration.png)", ""]
  if examples and any(answers.values()):
    lines += ["### Example answers", ""]
    for s in sets:
      ids = [a["id"] for a in answers[names[0]] if a["set"] == s][:examples]
      by = {n: {a["id"]: a for a in answers[n]} for n in names}
      for k, aid in enumerate(ids):
        first = by[names[0]][aid]
        lines += [f"**{s} {k + 1}** ({first.get('category') or 'no category'}): "
                  f"*{_cell(_human_turn(first['prompt']), 300)}*", "",
                  "| stage | answer | PM score |", "|---|---|---|"]
        for n in names:
          a = by[n].get(aid)
          score = pm["scores"][n].get(aid) if pm else None
          lines.append(f"| `{n}` | {_cell(a['completion']) if a else '-'} | "
                       f"{_fmt(score)} |")
        lines.append("")


def build(workdir: str, out_dir: str | None = None, *, examples: int = 3,
          title: str = "") -> dict:
  """Writes report.md and the figures into `out_dir` (default WORKDIR/report); returns
  {"markdown": path, "figures": {name: path}, "sections": [...]}."""
  out_dir = out_dir or os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  p = lambda *parts: os.path.join(workdir, *parts)  # noqa: E731
  figures: dict[str, str] = {}
  sections: list[str] = []
  lines = [f"# {title or 'Constitutional AI run'}", "",
           f"Workdir `{os.path.abspath(workdir)}`, report written "
           f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.", ""]

  status = _load(p("pipeline", "status.json"))
  if status:
    sections.append("pipeline")
    lines += ["## Pipeline", "", "| stage | status (last invocation) | seconds |",
              "|---|---|---|"]
    for stage in status["order"]:
      s = status["stages"].get(stage)
      if s:
        lines.append(f"| {stage} | {s['status']} | {s['seconds']:.1f} |")
    total = status.get("seconds")  # absent while the pipeline is still running (this stage)
    if total is None:
      total = sum(s["seconds"] for s in status["stages"].values())
      lines += ["", f"Stages before the report: {total:.1f} s in all.", ""]
    else:
      lines += ["", f"Last invocation: {total:.1f} s in all.", ""]

  ev = _load(p("eval", "report.json"))
  if ev and ev.get("stages"):
    sections.append("stages")
    _stage_section(lines, figures, ev["stages"], workdir, out_dir, examples)
  else:
    lines += ["## Stages compared", "", "Not run (job `eval` with `eval.stages`).", ""]
  if ev:
    extra = []
    for section in ("comparisons", "hhh"):
      for path, r in (ev.get(section) or {}).items():
        extra.append(f"| PM on `{os.path.basename(path)}` ({section}) | accuracy "
                     f"{_fmt(r['accuracy'])} over {r['n']} pairs, ECE {_fmt(r['ece'])} |")
    if ev.get("labeller"):
      r = ev["labeller"]
      extra.append(f"| AI labels vs human choices | accuracy {_fmt(r['accuracy'])} over "
                   f"{r['matched']} pairs, ECE {_fmt(r['ece'])} |")
    for path, r in (ev.get("mc") or {}).items():
      extra.append(f"| multiple choice `{os.path.basename(path)}` | accuracy "
                   f"{_fmt(r['accuracy'])} over {r['n']} items |")
    if extra:
      sections.append("evaluations")
      lines += ["## Other evaluations", "", "| what | result |", "|---|---|", *extra, "",
                "Reliability diagrams of these are in `eval/`.", ""]

  rl = _metrics(p("rl_train", "metrics.jsonl"))
  rl_sum = _load(p("rl_train", "summary.json")) or {}
  lines += ["## RL-CAI (PPO against the preference model)", ""]
  iterations = [m for m in rl if "score" in m]
  if iterations:
    sections.append("rl_train")
    panels = [x for x in (_panel(rl, *spec) for spec in PPO_PANELS) if x]
    figures["ppo_curves"] = plots.curves(panels, os.path.join(out_dir, "ppo_curves.png"),
                                         title="PPO training curves", xlabel="PPO iteration")
    first, last = iterations[0], iterations[-1]
    probes = [m for m in rl if "probe_score" in m]
    estimator = rl_sum.get("kl_estimator_in_reward", "k1")
    if len(probes) >= 2:
      a, b = probes[0], probes[-1]
      lines.append(f"**Probe** (greedy answers to the same held-out prompts, scored by the PM): "
                   f"{_fmt(a['probe_score'], 4)} at iteration {a['step']} -> "
                   f"{_fmt(b['probe_score'], 4)} at iteration {b['step']} "
                   f"({b['probe_score'] - a['probe_score']:+.4f}), at a KL to the SL-CAI policy "
                   f"of {_fmt(last.get('kl_k1'), 4)} nats per episode (k1) / "
                   f"{_fmt(last.get('kl_k3'), 4)} (k3, never negative) in the last iteration's "
                   f"rollouts. The reward's KL penalty uses {estimator}. The probe answers' "
                   f"mean length went {_fmt(a.get('probe_answer_tokens'), 1)} -> "
                   f"{_fmt(b.get('probe_answer_tokens'), 1)} tokens.")
      if b.get("probe_answer_tokens", 1e9) < 0.5 * a.get("probe_answer_tokens", 0.0):
        lines += ["", "**The answers shrank** to under half their length while the score "
                  "rose: the PM rewards shorter answers and PPO exploits it (reward hacking "
                  "towards the evasive answers the paper counters with helpfulness data in the "
                  "PM; helpfulness labels from a labeller that itself prefers short answers "
                  "do not counter it). The answers are in `rl_train/probe.jsonl`."]
      lines.append("")
    lines += [f"{len(iterations)} iterations. Mean PM score of the rollouts "
              f"{_fmt(first.get('score'))} -> {_fmt(last.get('score'))} (each iteration "
              "samples different prompts, so this curve mixes the policy's progress with the "
              f"prompts drawn); entropy {_fmt(first.get('entropy'))} -> "
              f"{_fmt(last.get('entropy'))}; approx. KL of the last update "
              f"{_fmt(last.get('approx_kl'), 6)}, clip fraction {_fmt(last.get('clipfrac'))}.",
              ""]
    lines += _per_axis_rollouts(rl)
    lines += ["![PPO curves](ppo_curves.png)", ""]
  else:
    lines += ["Not run.", ""]

  lines += ["## SL-CAI and the preference model", ""]
  slg = _load(p("sl_generate", "report.json"))
  if slg:
    sections.append("sl_generate")
    lines.append(f"- Critique/revision data: {slg['records']} red-team records "
                 f"({slg['flagged_records']} flagged), {slg['helpful_records']} helpful answers, "
                 f"{slg['sl_examples']} SL training examples; flags {slg.get('flags', {})}.")
  fb = _load(p("feedback", "report.json"))
  if fb:
    sections.append("feedback")
    lines.append(f"- AI feedback: {fb.get('labelled', 0)} pairs labelled ({fb['mode']}, "
                 f"{fb['num_principles']} principles, both orders {fb['both_orders']}); "
                 f"position bias {_fmt(fb.get('position_bias'))}, mean |p - 0.5| "
                 f"{_fmt(fb.get('mean_abs_p_minus_half'), 4)}; "
                 f"{fb['skipped_flagged']['count']} flagged pairs skipped.")
  sl_sum = _load(p("sl_train", "summary.json"))
  if sl_sum and sl_sum.get("initial_eval", {}).get("eval_loss") is not None:
    before = sl_sum["initial_eval"]["eval_loss"]
    after = sl_sum.get("final", {}).get("eval_loss")
    lines.append(f"- SL-CAI finetuning: {sl_sum['steps']} steps on {sl_sum['examples']} "
                 f"examples; loss on {sl_sum.get('held_out_examples', '?')} held-out revisions "
                 f"(NLL per token) {_fmt(before, 4)} before -> {_fmt(after, 4)} after.")
  pm_sum = _load(p("pm_train", "summary.json"))
  if pm_sum:
    sections.append("pm_train")
    final = pm_sum.get("final", {})
    pairs = ", ".join(f"{n} {k.replace('ai_', 'AI ').replace('ai', 'AI')}"
                      for k, n in pm_sum["pairs"].items())
    lines.append(f"- Preference model: {pm_sum['steps']} steps on {pairs} pairs; "
                 f"last batch's training loss {_fmt(final.get('loss'), 4)}, accuracy "
                 f"{_fmt(final.get('accuracy'))}.")
    start = pm_sum.get("initial_eval", {})
    held = pm_sum.get("held_out_pairs", {})
    axes = sorted(k[len("ai_"):] for k in held if k.startswith("ai_"))
    named = ([("ai", "held-out AI-labelled pairs")]
             + [(f"ai_{a}", f"held-out AI-labelled {a} pairs") for a in axes]
             + [("human", "held-out human comparisons"),
                ("train_ai", "AI-labelled training pairs")])
    for name, what in named:
      if f"eval_{name}_loss" in final:
        if name == "ai" and axes:
          n = sum(held[f"ai_{a}"] for a in axes)
        elif name == "train_ai" and "ai" not in pm_sum["pairs"]:
          n = sum(v for k, v in pm_sum["pairs"].items() if k.startswith("ai_"))
        else:
          n = (held.get(name) if not name.startswith("train")
               else pm_sum["pairs"].get(name[len("train_"):]))
        floor = pm_sum.get("label_entropy", {}).get(name)
        lines.append(
            f"  - on {n} {what}: soft-BT loss {_fmt(start.get(f'eval_{name}_loss'), 5)} before "
            f"-> {_fmt(final[f'eval_{name}_loss'], 5)} after (log 2 = 0.69315"
            + (f"; the labels' own entropy, the lowest loss possible, {floor:.5f}"
               if floor is not None else "")
            + f"), accuracy against the labels {_fmt(start.get(f'eval_{name}_accuracy'))} -> "
            f"{_fmt(final.get(f'eval_{name}_accuracy'))}"
            + (f"; calibration of the final PM: ECE {_fmt(cal[name]['ece'], 4)}"
               if (cal := pm_sum.get("calibration", {})).get(name, {}).get("ece") is not None
               else "") + ".")
  panels = []
  sl_metrics = _metrics(p("sl_train", "metrics.jsonl"))
  pm_metrics = _metrics(p("pm_train", "metrics.jsonl"))
  for records, keys, t, y in (
      (sl_metrics, ("loss", "eval_loss"), "SL-CAI finetuning loss", "NLL per token"),
      (pm_metrics, ("loss", "eval_ai_loss", "eval_human_loss"), "PM soft Bradley-Terry loss",
       "loss per pair"),
      (pm_metrics, ("accuracy", "eval_ai_accuracy", "eval_human_accuracy"),
       "PM accuracy against the labels", "accuracy")):
    if any(keys[0] in m for m in records):
      labels = {"loss": "training batch", "accuracy": "training batch"}
      series = [_series(records, k, labels.get(k, k.replace("eval_", "held-out ")
                                                  .replace("_loss", "").replace("_accuracy", "")))
                for k in keys if any(k in m for m in records)]
      panels.append((t, series, y))
  if panels:
    figures["training_curves"] = plots.curves(
        panels, os.path.join(out_dir, "training_curves.png"),
        title="Supervised and preference-model training", xlabel="optimizer step")
    lines += ["", "![training curves](training_curves.png)"]
  if not (slg or fb or pm_sum or panels):
    lines.append("Not run.")
  lines.append("")

  lines += ["## Reading these numbers", "",
            "- Intervals are bootstrap percentiles over prompts; with a handful of prompts they "
            "are wide, and overlapping intervals mean the run cannot tell the stages apart.",
            "- The judge is an AI feedback model (by default the base model itself), not "
            "people: its Elo measures agreement with that model under the constitution, and a "
            "small judge is close to chance on hard pairs (see the position bias above).",
            "- PM scores are in the PM's own units (logits); only differences between answers "
            "to the same prompt are meaningful.",
            ""]
  md = os.path.join(out_dir, "report.md")
  tmp = md + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(tmp, md)
  result = {"markdown": md, "figures": figures, "sections": sections}
  write_json_atomic(os.path.join(out_dir, "report.json"), result)
  return result
