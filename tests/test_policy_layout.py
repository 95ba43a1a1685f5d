"""The four stages that sample the policy read the same text for the same prompt.

sl_generate's initial answers, sample_pairs, rl_train's rollouts and the evaluation's answers
each run as a job on a tiny checkpoint until their first sampler call; the sampler is replaced
by a recorder that writes down the exact text each row would be continued from (the prefilled
prefix's text followed by the row) and stops the job. For each layout (`hh` with no prefix,
`hh` after the helpful exchanges, `chat` with the checkpoint's ChatML template) the four texts
must be equal, and equal to the string the test builds itself from the constitution file and
the template's own markers.
"""

from __future__ import annotations

import json

import pytest

from cai_jax import main
from cai_jax.sampling import sampler as sampler_module
from configs_loader import load_config
import tiny_model

PROMPT = "\n\nHuman: What should I pack for a day hike?\n\nAssistant:"
HELPFUL = "\n\nHuman: How do I boil an egg?\n\nAssistant:"


class _Stop(Exception):
  pass


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("layout")
  out = {"folder": str(folder),
         "hh": tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True),
         "chat": tiny_model.write_chat_checkpoint(str(folder / "chat"))}
  for name, rid, text in (("prompts", "x1", PROMPT), ("helpful", "y1", HELPFUL)):
    out[name] = str(folder / f"{name}.jsonl")
    with open(out[name], "w") as f:
      f.write(json.dumps({"id": rid, "prompt": text}) + "\n")
  out["constitution"] = tiny_model.write_short_constitution(str(folder / "short.json"))
  return out


@pytest.fixture
def recorder(monkeypatch):
  """Records, per sampler call, the full text of every row; the first call stops the job."""
  seen: list[list[str]] = []
  texts: dict[int, str] = {}
  prefill = sampler_module.Sampler.prefill_prefix

  def prefill_prefix(self, prefix):
    cache = prefill(self, prefix)
    texts[id(cache)] = prefix
    return cache

  def generate(self, prompts, *, prefix=None, **kwargs):
    head = texts[id(prefix)] if prefix is not None else ""
    seen.append([head + p for p in prompts])
    raise _Stop

  monkeypatch.setattr(sampler_module.Sampler, "prefill_prefix", prefill_prefix)
  monkeypatch.setattr(sampler_module.Sampler, "generate", generate)
  return seen


def _stage_configs(a, fmt: str, policy_prefix: str):
  ckpt = a["chat"] if fmt == "chat" else a["hh"]
  common = {"model.checkpoint": ckpt, "model.cache_dir": a["folder"],
            "conversation.format": fmt, "conversation.policy_prefix": policy_prefix,
            "constitution": a["constitution"]}
  return {
      "sl_generate": load_config("sl_generate", **common, **{
          "sl_generate.prompts": a["prompts"], "sl_generate.helpful_prompts": "",
          "sl_generate.rounds": 1}),
      "sample_pairs": load_config("sample_pairs", **common, **{
          "sample_pairs.prompts": a["prompts"], "sample_pairs.helpful_prompts": ""}),
      "rl_train": load_config("rl_train", **common, **{
          "rl_train.prompts": a["prompts"], "rl_train.helpful_prompts": "",
          "rl_train.reward": "target_token", "rl_train.target_token_id": 3,
          "rl_train.value_init": "policy", "rl_train.probe_count": 0,
          "rl_train.batch_size": 1, "rl_train.minibatch_size": 1,
          "rl_train.max_prompt_tokens": 512, "rl_train.max_new_tokens": 4,
          "rl_train.progress": False}),
      "eval": load_config("eval", **common, **{
          "eval.stages": f"a={ckpt},b={ckpt}", "eval.red_team_prompts": a["prompts"],
          "eval.helpful_prompts": a["helpful"], "eval.progress": False}),
  }


def _expected(a, fmt: str, policy_prefix: str) -> str:
  """The policy's text, built here from the constitution file and the template's markers."""
  exchanges = ""
  if policy_prefix == "helpful_exchanges":
    spec = json.load(open(a["constitution"]))
    exchanges = "".join(f"\n\nHuman: {x['human']}\n\nAssistant: {x['assistant']}"
                        for x in spec["helpful_few_shot"])
  if fmt == "hh":
    return exchanges + PROMPT
  turns = []
  if exchanges:
    spec = json.load(open(a["constitution"]))
    for x in spec["helpful_few_shot"]:
      turns += [("user", x["human"]), ("assistant", x["assistant"])]
  turns.append(("user", "What should I pack for a day hike?"))
  return "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns) + \
      "<|im_start|>assistant\n"


@pytest.mark.parametrize("fmt,policy_prefix", [("hh", "none"), ("hh", "helpful_exchanges"),
                                                ("chat", "none"), ("chat", "helpful_exchanges")])
def test_four_stages_build_the_same_text(assets, recorder, tmp_path, fmt, policy_prefix):
  want = _expected(assets, fmt, policy_prefix)
  got = {}
  for stage, config in _stage_configs(assets, fmt, policy_prefix).items():
    before = len(recorder)
    with pytest.raises(_Stop):
      main.run(config, str(tmp_path / stage))
    assert len(recorder) == before + 1, stage
    rows = recorder[-1]
    # sample_pairs asks twice per prompt (two answers); eval answers the harmless set first
    got[stage] = rows[0]
    assert all(r == rows[0] for r in rows[:2 if stage == "sample_pairs" else 1]), stage
  assert got == {stage: want for stage in got}, (fmt, policy_prefix)
  if policy_prefix == "none":
    assert "boil" not in want and "hike" in want
  else:
    assert want.index("hike") > len(want) // 3  # the exchanges come first
