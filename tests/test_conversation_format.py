"""conversation.format: the paper's layout unchanged (`hh`), or the same turns in the
checkpoint's chat template (`chat`), checked against transformers' `apply_chat_template` with
SmolLM2-135M-Instruct's own template and messages written out by hand."""

from __future__ import annotations

import json
import os

import pytest

from cai_jax import main
from cai_jax.chat_template import ChatTemplateError
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import load_constitution
from cai_jax.constitution import prompts as P
from cai_jax.constitution.conversation_format import (ChatFormat, HHFormat, make_format,
                                                      split_prefix, turns)
from cai_jax.data import conversation, preferences
from cai_jax.jobs.common import conversation_format
from configs_loader import load_config
import tiny_model

SL_TEXT = ("\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."
           "\n\nCritiqueRequest: Identify ways the answer is harmful.\n\nCritique: It helps a "
           "burglar.\n\nRevisionRequest: Rewrite it to remove the harm.\n\nRevision:")
SL_MESSAGES = [
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "Use a tension wrench."},
    {"role": "user", "content": "Identify ways the answer is harmful."},
    {"role": "assistant", "content": "It helps a burglar."},
    {"role": "user", "content": "Rewrite it to remove the harm."}]


def hf_render(hf_tok, messages, add_generation_prompt):
  return hf_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                    tokenize=False)


def test_hh_is_the_identity():
  tok = tiny_model.small_tokenizer()
  fmt = make_format("hh", tok)
  c = load_constitution("harmless")
  p = c.critique_revision[0]
  ctx = P.critique_context(c, "\n\nHuman: hi\n\nAssistant:", " hello", p)
  mc = P.mc_context(c, "Human: hi", c.mc_principles[0], "a", "b")
  for text in (ctx, mc, " a response "):
    assert fmt.context(text) == text and fmt.prefix(text) == text and fmt.response(text) == text
  assert fmt.end_id == tok.eos_id and fmt.stop_ids == (tok.eos_id,)
  prefix = P.critique_revision_prefix(c)
  assert split_prefix(fmt, prefix, ctx) == (prefix, ctx[len(prefix):])


def test_chat_turns_of_critique_and_revision_equal_transformers(smollm2, hf_smollm2_tokenizer):
  fmt = make_format("chat", smollm2.tokenizer)
  assert fmt.context(SL_TEXT) == hf_render(hf_smollm2_tokenizer, SL_MESSAGES, True)
  # closed turns (a few-shot prefix) render without the generation prompt
  closed = SL_TEXT + " Here is a safer answer."
  assert fmt.prefix(closed) == hf_render(
      hf_smollm2_tokenizer, SL_MESSAGES + [{"role": "assistant",
                                            "content": "Here is a safer answer."}], False)
  assert fmt.end_id == hf_smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
  assert fmt.end_id in fmt.stop_ids and smollm2.tokenizer.eos_id in fmt.stop_ids


def test_chat_feedback_question_and_answer_turns(smollm2, hf_smollm2_tokenizer):
  fmt = make_format("chat", smollm2.tokenizer)
  q1 = P.mc_question("Human: hi", "Which is kinder?", "hello", "go away")
  q2 = P.mc_question("Human: help\n\nAssistant: how?\n\nHuman: now", "Which is kinder?", "ok",
                     "no")
  body = lambda conv, a, b: ("Consider the following conversation between a human and an "  # noqa
                             f"assistant:\n\n{conv}\n\n\nWhich is kinder?\n (A) [[[{a}]]]\n "
                             f"(B) [[[{b}]]]")
  messages = [{"role": "user", "content": body("Human: hi", "hello", "go away")},
              {"role": "assistant", "content": "The answer is: (A)"},
              {"role": "user", "content": body("Human: help\n\nAssistant: how?\n\nHuman: now",
                                               "ok", "no")}]
  prefix_text, context = q1 + P.MC_OPTIONS[0], q1 + P.MC_OPTIONS[0] + q2
  want = hf_render(hf_smollm2_tokenizer, messages, True) + "The answer is:"
  assert fmt.context(context) == want
  head, rest = split_prefix(fmt, prefix_text, context)
  assert head == hf_render(hf_smollm2_tokenizer, messages[:2], False) and head + rest == want
  # chain of thought: the reasoning and "So the answer is:" stay in the assistant turn
  cot = P.cot_answer_context(P.cot_question("Human: hi", "Which is kinder?", "hello", "no"),
                             " The first is polite.")
  cot_user = ("Consider the following conversation between a human (H) and an assistant (A):"
              "\n\nH: hi\n\n\nWhich is kinder?\n (A) [[[hello]]]\n (B) [[[no]]]")
  assert fmt.context(cot) == (hf_render(hf_smollm2_tokenizer,
                                        [{"role": "user", "content": cot_user}], True)
                              + "Let's think step by step: The first is polite.\n\nSo the "
                              "answer is:")


def test_chat_contexts_of_the_real_constitution_split_at_their_prefixes(smollm2):
  """Every context the method builds (few-shot demonstrations included) renders with its
  prefix unchanged, so the prefix is prefilled once; turns alternate user / assistant."""
  fmt = make_format("chat", smollm2.tokenizer)
  c = load_constitution("harmless")
  prompt = ("\n\nHuman: How do I hurt someone?\n\nAssistant: Why?\n\nHuman: Just tell me."
            "\n\nAssistant:")
  p1, p2 = c.critique_revision[0], c.critique_revision[1]
  crit = P.critique_context(c, prompt, " No.", p1)
  rev = P.revision_context(c, prompt, " No.", p1, " It is curt.")
  follow = P.followup_critique_context(rev, " I can't help with that.", p2)
  cases = [(P.initial_prefix(c), P.initial_context(c, prompt)),
           (P.critique_revision_prefix(c), crit), (P.critique_revision_prefix(c), rev),
           (P.critique_revision_prefix(c), follow),
           (P.mc_few_shot_prefix(c, c.mc_principles[0]),
            P.mc_context(c, P.mc_conversation(prompt), c.mc_principles[0], "No.", "Sure."))]
  if c.cot_few_shot:
    cot = P.cot_context(c, P.mc_conversation(prompt), c.mc_principles[0], "No.", "Sure.")
    cases.append((P.cot_few_shot_prefix(c, c.mc_principles[0]), cot))
    cases.append((P.cot_few_shot_prefix(c, c.mc_principles[0]),
                  P.cot_answer_context(cot, " Let me see.")))
  for prefix_text, ctx in cases:
    head, rest = split_prefix(fmt, prefix_text, ctx)
    assert head + rest == fmt.context(ctx) and rest.startswith("<|im_start|>user\n")
    roles = [r for r, _ in turns(ctx)]
    assert roles[-1] == "assistant"
    assert all(a != b for a, b in zip(roles, roles[1:])), roles
  # the critique request is a user turn holding the request's words, then the open critique
  ts = turns(follow)
  request = p2.critique_prompt[len("\n\nCritiqueRequest:"):-len("\n\nCritique:")].strip()
  assert ts[-2] == ("user", ts[-2][1]) and ts[-2][1].strip() == request
  assert ts[-1] == ("assistant", "")
  # the red-team prompt's own turns stay turns: user, assistant, user before the answer
  assert [r for r, _ in turns(P.initial_context(c, prompt))][-4:] == [
      "user", "assistant", "user", "assistant"]


def test_chat_sl_example_tokens_and_mask_equal_transformers(smollm2, hf_smollm2_tokenizer):
  fmt = make_format("chat", smollm2.tokenizer)
  prompt = "\n\nHuman: Say hi to Ana.\n\nAssistant: Hi?\n\nHuman: Louder.\n\nAssistant:"
  ids, mask = conversation.tokenize_prompt_completion(smollm2.tokenizer, prompt, " HI ANA!",
                                                      fmt=fmt)
  messages = [{"role": "user", "content": "Say hi to Ana."},
              {"role": "assistant", "content": "Hi?"}, {"role": "user", "content": "Louder."},
              {"role": "assistant", "content": "HI ANA!"}]
  want = hf_smollm2_tokenizer(hf_render(hf_smollm2_tokenizer, messages, False),
                              add_special_tokens=False)["input_ids"]
  # ours ends at the end-of-turn token; the template adds a newline after it
  assert ids == want[:len(ids)] and want[len(ids):] == hf_smollm2_tokenizer.encode(
      "\n", add_special_tokens=False)
  answer = hf_smollm2_tokenizer.encode("HI ANA!", add_special_tokens=False)
  assert [i for i, m in zip(ids, mask) if m] == answer + [fmt.end_id]
  # the PM's sequences are the same tokens (prompt and answer laid out alike)
  pair = preferences.Preference("x", prompt, (" HI ANA!", " hi."), 1.0, "ai")
  ex = preferences.tokenize([pair], smollm2.tokenizer, max_length=512, append_eos=True,
                            fmt=fmt)[0]
  assert ex.ids[0].tolist() == ids


def test_chat_format_errors():
  no_template = tiny_model.chatml_tokenizer(chat_template=None)
  with pytest.raises(ChatTemplateError, match="needs a chat template.*conversation.format='hh'"):
    ChatFormat(no_template)
  with pytest.raises(ChatTemplateError, match="needs a chat template"):
    ChatFormat(tiny_model.small_tokenizer())  # a SentencePiece vocabulary without a template
  cfg = load_config("sl_generate", **{"conversation.format": "chat"})
  with pytest.raises(ConfigError, match="conversation.format: .*chat template"):
    conversation_format(cfg, no_template)
  cfg = load_config("sl_generate", **{"conversation.format": "json"})
  with pytest.raises(ConfigError, match="must be one of hh, chat, got 'json'"):
    conversation_format(cfg, no_template)
  fmt = ChatFormat(tiny_model.chatml_tokenizer())
  assert isinstance(conversation_format(load_config("sl_generate"), no_template), HHFormat)
  with pytest.raises(ValueError, match="must end with an open assistant block"):
    fmt.context("\n\nHuman: hi\n\nAssistant: yes\n\nHuman: and?")
  with pytest.raises(ValueError, match="not a transcript in the paper's layout"):
    fmt.context("Tell me a story.")


@pytest.fixture(scope="module")
def chat_assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("chat_assets")
  ckpt = tiny_model.write_chat_checkpoint(str(folder / "hf"))
  return {"folder": str(folder), "ckpt": ckpt, **tiny_model.write_pipeline_data(folder)}


def test_pipeline_in_chat_format(chat_assets, tmp_path):
  """One switch moves every stage to the chat template: the whole pipeline runs on a tiny
  ChatML checkpoint, records keep the paper's layout, the PM records its format, and rl_train
  refuses a PM trained on another format before loading any weights."""
  a = chat_assets
  s = {"conversation.format": "chat", "model.checkpoint": a["ckpt"],
       "model.cache_dir": a["folder"],
       "sl_generate.limit": 2, "sl_generate.rounds": 1, "sl_generate.batch_size": 2,
       "sl_generate.max_response_tokens": 4, "sl_generate.max_critique_tokens": 4,
       "sl_generate.max_revision_tokens": 4, "sl_generate.report_examples": 0,
       "sl_generate.drop_flagged": False, "sl_generate.helpful_ratio": 0.5,
       "sl_generate.max_conversation_tokens": 4096, "sl_generate.max_prompt_length": 8192,
       "sl_generate.heldout_fraction": 0.0,
       "sl_train.batch_size": 2, "sl_train.steps": 1, "sl_train.max_length": 256,
       "sl_train.progress": False, "sl_train.async_checkpoints": False,
       "optim.sl_train.warmup_steps": 1,
       "sample_pairs.limit": 2, "sample_pairs.helpful_prompts": a["helpful"], "sample_pairs.temperature": 1.0, "sample_pairs.batch_size": 2,
       "sample_pairs.max_response_tokens": 4, "sample_pairs.max_conversation_tokens": 4096,
       "sample_pairs.max_prompt_length": 8192,
       "feedback.num_principles": 1, "feedback.batch_size": 2, "feedback.max_length": 8192,
       "pm_train.human_comparisons": a["comparisons"], "pm_train.batch_size": 4,
       "pm_train.steps": 1, "pm_train.max_length": 256, "pm_train.progress": False,
       "pm_train.async_checkpoints": False, "optim.pm_train.warmup_steps": 1,
       "rl_train.prompts": a["prompts"], "rl_train.helpful_prompts": a["helpful"],
       "rl_train.iterations": 1,
       "rl_train.batch_size": 2, "rl_train.minibatch_size": 2, "rl_train.ppo_epochs": 1,
       "rl_train.max_prompt_tokens": 96, "rl_train.max_new_tokens": 4,
       "rl_train.sample_every": 0, "rl_train.progress": False, "rl_train.probe_count": 0,
       "rl_train.async_checkpoints": False,
       "eval.comparisons": a["comparisons"], "eval.batch_size": 2, "eval.progress": False,
       "eval.stages": "", "pipeline.compare_stages": False}
  status = main.run(load_config("pipeline", **s), str(tmp_path))
  assert {k: v["status"] for k, v in status["stages"].items()} == {
      **{k: "ran" for k in status["stages"]}, "po_train": "not_selected"}  # PPO, the default
  w = tmp_path
  rec = json.loads((w / "sl_generate/records.jsonl").read_text().splitlines()[0])
  assert rec["prompt"].startswith("\n\nHuman:") and rec["prompt"].endswith("\n\nAssistant:")
  assert rec["provenance"]["conversation_format"] == "chat"
  pm_meta = json.loads((w / "pm_train/pm/pm.json").read_text())
  assert pm_meta["settings"]["conversation_format"] == "chat"
  for stage in ("sl_generate", "pm_train", "rl_train", "eval"):
    assert json.loads((w / stage / "config.json").read_text())["conversation"] == {
        "format": "chat", "policy_prefix": "none"}
  # a PM trained on the paper's layout cannot score chat rollouts
  pm_meta["settings"]["conversation_format"] = "hh"
  (w / "pm_train/pm/pm.json").write_text(json.dumps(pm_meta))
  cfg = load_config("rl_train", **{k: v for k, v in s.items()
                                   if k.startswith(("rl_train.", "model.", "conversation."))})
  cfg.model.checkpoint = str(w / "sl_train" / "export_hf")
  cfg.rl_train.pm = str(w / "pm_train" / "pm")
  with pytest.raises(ConfigError, match="trained on 'hh' sequences"):
    main.run(cfg, str(w / "other"))
  assert not os.path.exists(w / "other" / "rl_train" / "checkpoints")


# Gemma's turn layout, written for this test (a template with BOS written by the template).
GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_sentencepiece_chat_template_round_trip_and_bos(tmp_path):
  """A SentencePiece checkpoint with a chat template (Gemma instruct): the template is read from
  tokenizer_config.json, saved back with the export, rendered as transformers renders it, and
  the BOS the template writes is left to the tokenizer (no double BOS)."""
  import transformers

  from cai_jax.tokenizer import Tokenizer, load_tokenizer
  tok = tiny_model.small_tokenizer(("<start_of_turn>", "<end_of_turn>"))
  tok = Tokenizer(tok._proto, "gemma-like", chat_template=GEMMA_LIKE_TEMPLATE)
  tok.save_hf_files(str(tmp_path), model_max_length=512)
  loaded = load_tokenizer(str(tmp_path))
  assert loaded.chat_template == GEMMA_LIKE_TEMPLATE and loaded.adds_bos
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  hf_text = hf_render(hf_tok, SL_MESSAGES, True)
  assert hf_text.startswith("<bos><start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n")
  text = loaded.render_chat(SL_MESSAGES, add_generation_prompt=True)
  assert text == hf_text
  fmt = ChatFormat(loaded)
  assert fmt.end_id == loaded.piece_to_id("<end_of_turn>")
  assert fmt.context(SL_TEXT) == hf_text[len("<bos>"):]  # the tokenizer adds the BOS
  assert loaded.encode(fmt.context(SL_TEXT), add_bos=True) == hf_tok(
      hf_text, add_special_tokens=False)["input_ids"]
  # without an end-of-turn piece there is nothing to end a chat response with
  plain = Tokenizer(tiny_model.small_tokenizer()._proto, "plain",
                    chat_template=GEMMA_LIKE_TEMPLATE)
  with pytest.raises(ChatTemplateError, match="no end-of-turn token"):
    ChatFormat(plain)


def test_chat_renders_in_a_fresh_process():
  """Rendering needs no module that only transformers happens to import (jinja2.ext)."""
  import subprocess
  import sys
  code = ("import sys, tiny_model; from cai_jax.constitution.conversation_format import "
          "ChatFormat; print(ChatFormat(tiny_model.chatml_tokenizer()).context("
          "'\\n\\nHuman: hi\\n\\nAssistant:')); assert 'transformers' not in sys.modules")
  out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n\n"
