"""The run report: WORKDIR/report/report.md plus PNG figures, built from what the stages wrote.

Reads (each part optional: a stage that did not run gets a line saying so):
  pipeline/status.json        stage status and seconds of the last pipeline invocation
  sl_generate/report.json     SL-CAI data counts and flags; sl_train/metrics.jsonl loss curve
  feedback/report.json        AI labels: count, position bias, confidence
  pm_train/metrics.jsonl, summary.json   PM training curve and final numbers
  rl_train/metrics.jsonl, summary.json   PPO curves (PM score, total reward, KL, entropy, length)
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

PPO_PANELS = (("score", "mean PM score of the rollouts", "PM score (logits)"),
              ("reward_total", "reward after the KL penalty", "reward per episode"),
              ("kl", "KL(policy || SL-CAI) per episode", "KL (nats)"),
              ("entropy", "policy entropy per token", "entropy (nats)"),
              ("response_length", "answer length", "tokens"),
              ("kl_coef", "KL coefficient", "beta"))


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
  prefix = ("after the constitution's helpful exchanges" if st.get("answer_prefix") == "few_shot"
            else "zero-shot")
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
  lines += ["## RL-CAI (PPO against the preference model)", ""]
  if rl:
    sections.append("rl_train")
    panels = [(t, [m["step"] for m in rl if k in m], [m[k] for m in rl if k in m], y)
              for k, t, y in PPO_PANELS if any(k in m for m in rl)]
    figures["ppo_curves"] = plots.curves(panels, os.path.join(out_dir, "ppo_curves.png"),
                                         title="PPO training curves", xlabel="PPO iteration")
    first, last = rl[0], rl[-1]
    lines += [f"{len(rl)} iterations. Mean PM score of the rollouts {_fmt(first.get('score'))} "
              f"-> {_fmt(last.get('score'))}; KL to the SL-CAI policy {_fmt(last.get('kl'))} "
              f"nats per episode at the end; entropy {_fmt(first.get('entropy'))} -> "
              f"{_fmt(last.get('entropy'))}.", "", "![PPO curves](ppo_curves.png)", ""]
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
  pm_sum = _load(p("pm_train", "summary.json"))
  if pm_sum:
    sections.append("pm_train")
    final = pm_sum.get("final", {})
    lines.append(f"- Preference model: {pm_sum['steps']} steps on {pm_sum['pairs']} pairs; "
                 f"final training loss {_fmt(final.get('loss'))}, accuracy "
                 f"{_fmt(final.get('accuracy'))}.")
  panels = []
  for stage, key, t, y in (("sl_train", "loss", "SL-CAI finetuning loss", "NLL per token"),
                           ("pm_train", "loss", "PM training loss", "soft BT loss per pair"),
                           ("pm_train", "accuracy", "PM training accuracy", "accuracy")):
    ms = [m for m in _metrics(p(stage, "metrics.jsonl")) if key in m]
    if ms:
      panels.append((t, [m["step"] for m in ms], [m[key] for m in ms], y))
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
