"""Multiple-choice scoring: packing is exact (tiny preset, against one forward pass per option),
shapes are bucketed, bad files fail with file:line, and on Gemma 3 270M the per-option scores
equal transformers'."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.data.jsonl import DataError
from cai_jax.eval import mc
from cai_jax.model import families
from cai_jax.model import decoder
from conftest import PAPER_PROMPTS, needs_transformers

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mc_paper_format.jsonl")


class CharTokenizer:
  """Test double for the tiny preset: one id per character (BOS = 2)."""
  bos_id = 2
  start_ids = [2]  # BOS starts every sequence

  def encode(self, text, *, add_bos):
    return ([self.bos_id] if add_bos else []) + [3 + (ord(c) % 500) for c in text]

  def encode_batch(self, texts, *, add_bos):
    return [self.encode(t, add_bos=add_bos) for t in texts]


@pytest.fixture(scope="module")
def tiny():
  config = families.preset("tiny")
  return config, decoder.init_params(config, jax.random.PRNGKey(0))


def naive_scores(config, params, prompt_ids, options_ids):
  """One unpacked forward pass per option: the definition the packed scorer must equal."""
  model = decoder.Decoder(config)
  scores = []
  for option in options_ids:
    ids = jnp.asarray([list(prompt_ids) + list(option)])
    positions, mask = decoder.sequence_inputs(jnp.ones_like(ids, bool))
    logits, _ = model.apply({"params": params}, ids, positions, mask)
    logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
    p = len(prompt_ids)
    scores.append(float(sum(logp[p - 1 + k, t] for k, t in enumerate(option))))
  return scores


def test_pack_layout():
  packed = mc.pack([2, 10, 11], [[20, 21], [30]], max_length=64)
  np.testing.assert_array_equal(packed.tokens, [2, 10, 11, 20, 21, 30])
  np.testing.assert_array_equal(packed.positions, [0, 1, 2, 3, 4, 3])
  np.testing.assert_array_equal(packed.branch, [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(packed.pred_index, [2, 3, 2])
  np.testing.assert_array_equal(packed.target, [20, 21, 30])
  np.testing.assert_array_equal(packed.option, [0, 0, 1])
  assert not packed.truncated


def test_truncation_keeps_bos_and_drops_oldest_prompt_tokens():
  packed = mc.pack([2] + list(range(10, 30)), [[40, 41]], max_length=8)
  assert packed.truncated
  np.testing.assert_array_equal(packed.tokens, [2, 25, 26, 27, 28, 29, 40, 41])
  with pytest.raises(ValueError, match="options alone"):
    mc.pack([2, 3], [[5] * 7], max_length=8)


def test_packed_scores_equal_one_pass_per_option(tiny):
  """Prompts longer than the tiny window (8), options of unequal length, a truncated item."""
  config, params = tiny
  tok = CharTokenizer()
  items = [
      mc.MCItem("the sky above the harbour was", (" blue", " green and wide", " x"),
                (True, False, False)),
      mc.MCItem("short", (" a", " bb"), (False, True)),
      mc.MCItem("z" * 70, (" tail",), (True,)),  # truncated at max_length=64
  ]
  scorer = mc.MCScorer(config, params, tok, max_length=64, tokens_per_batch=128)
  result = scorer.score(items)
  assert result.num_truncated == 1
  for item, got in zip(items, result.scores):
    packed = mc.pack(tok.encode(item.prompt, add_bos=True),
                     tok.encode_batch(list(item.options), add_bos=False), 64)
    prompt_ids = packed.tokens[packed.branch == 0]
    options = [packed.tokens[packed.branch == j + 1] for j in range(len(item.options))]
    np.testing.assert_allclose(got, naive_scores(config, params, prompt_ids, options),
                               rtol=1e-5, atol=1e-4)
  expected = [item.is_correct[int(np.argmax(s))] for item, s in zip(items, result.scores)]
  assert result.correct == expected


def test_shapes_are_bucketed(tiny):
  config, params = tiny
  rng = np.random.default_rng(0)
  items = [mc.MCItem("p" * int(rng.integers(5, 200)), (" (A)", " (B)"), (True, False))
           for _ in range(40)]
  scorer = mc.MCScorer(config, params, CharTokenizer(), max_length=256, tokens_per_batch=1024)
  scorer.score(items)
  # 40 distinct prompt lengths, but only the length buckets 64, 128 and 256 compile, each with
  # full batches and at most one smaller power-of-two batch for its remainder.
  assert scorer._score._cache_size() <= 6


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"corrects": [" (A)"], "incorrects": [" (B)"]}', "missing field 'prompt'"),
    ('{"prompt": "p", "corrects": " (A)", "incorrects": []}', "field 'corrects' should be list"),
    ('{"prompt": "p", "corrects": [], "incorrects": [" (B)"]}', "non-empty list"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "ok", "corrects": [" (A)"], "incorrects": [" (B)"]}\n' + line + "\n")
  with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
    mc.read_mc_file(str(path))


def test_empty_file_is_an_error(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text("\n")
  with pytest.raises(DataError, match="empty.jsonl: no items"):
    mc.read_mc_file(str(path))


# ----------------------------------------------------------------------------- real model


def paper_fewshot_as_mc(tmp_path) -> str | None:
  """The paper's RLMadisonFewShotPrompts.json items, which are MC items already."""
  src = os.path.join(PAPER_PROMPTS, "RLMadisonFewShotPrompts.json")
  if not os.path.exists(src):
    return None
  with open(src) as f:
    items = json.load(f)
  path = tmp_path / "paper_fewshot.jsonl"
  path.write_text("".join(json.dumps(it) + "\n" for it in items))
  return str(path)


@needs_transformers
def test_scores_match_transformers(gemma270m, hf_gguf_model, tmp_path):
  import torch

  files = [FIXTURE] + [p for p in [paper_fewshot_as_mc(tmp_path)] if p]
  tok = gemma270m.tokenizer
  scorer = mc.MCScorer(gemma270m.config, gemma270m.params, tok)
  worst = 0.0
  for path in files:
    items = mc.read_mc_file(path)
    result = scorer.score(items)
    for item, ours in zip(items, result.scores):
      prompt = tok.encode(item.prompt, add_bos=True)
      ref = []
      for option in item.options:
        ids = prompt + tok.encode(option, add_bos=False)
        with torch.no_grad():
          logits = hf_gguf_model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1).numpy()
        ref.append(sum(logp[k - 1, ids[k]] for k in range(len(prompt), len(ids))))
      worst = max(worst, float(np.max(np.abs(np.asarray(ours) - ref))))
      assert int(np.argmax(ours)) == int(np.argmax(ref))
  print(f"max |score difference| vs transformers: {worst:.2e}")
  assert worst <= 2e-3


def test_eval_mc_job_writes_results(gemma270m, model_cache_dir, tmp_path):
  from cai_jax import main
  from configs_loader import load_config

  config = load_config("eval_mc", **{"eval.files": FIXTURE, "model.cache_dir": model_cache_dir})
  accuracies = main.run(config, str(tmp_path))
  out = json.loads((tmp_path / "eval_mc" / "mc_paper_format.json").read_text())
  assert out["n"] == 7 and len(out["items"]) == 7
  assert out["accuracy"] == pytest.approx(np.mean([it["correct"] for it in out["items"]]))
  assert accuracies[FIXTURE] == out["accuracy"]
  assert all(len(it["scores"]) in (2, 3) for it in out["items"])
  assert (tmp_path / "eval_mc" / "config.json").exists()


def test_eval_mc_job_fails_before_work_on_a_bad_file(model_cache_dir, tmp_path):
  from cai_jax import main
  from configs_loader import load_config

  bad = tmp_path / "bad.jsonl"
  shutil.copy(FIXTURE, bad)
  with open(bad, "a") as f:
    f.write('{"prompt": "p", "corrects": [" (A)"]}\n')
  config = load_config("eval_mc", **{"eval.files": f"{FIXTURE},{bad}",
                                     "model.cache_dir": model_cache_dir})
  with pytest.raises(DataError, match="bad.jsonl:8: missing field 'incorrects'"):
    main.run(config, str(tmp_path))
  assert not (tmp_path / "eval_mc" / "mc_paper_format.json").exists()


def test_scores_after_a_cached_prefix_equal_full_scores():
  """MCScorer.score_after (shared prefix computed once, then question + options reading its
  cache) gives the scores of scoring each full prompt; the tiny preset's 8-token sliding window
  is far shorter than the prefix, so local layers' windows over cached slots are exercised."""
  import jax
  import tiny_model
  from cai_jax.eval.mc import MCItem, MCScorer
  from cai_jax.model import decoder

  tok = tiny_model.small_tokenizer()
  cfg = tiny_model.tiny_config(tok)
  params = decoder.init_params(cfg, jax.random.PRNGKey(4))
  scorer = MCScorer(cfg, params, tok, max_length=512, tokens_per_batch=512)
  prefix = "Examples of careful answers. Q: is fire hot? A: yes.\n\n"
  items = [MCItem(prefix + q, (" (A)", " (B)", " maybe"), (True, False, False)) for q in
           ["Q: is ice cold? A:", "Q: which is larger, 3 or 30? The answer is:", "x"]]
  full = scorer.score(items)
  cached = scorer.score_after(items, scorer.prefill(prefix))
  np.testing.assert_allclose(np.asarray(cached.scores), np.asarray(full.scores), atol=1e-4)
  assert cached.correct == full.correct
  with pytest.raises(ValueError, match="does not start with the prefix"):
    scorer.score_after([MCItem("other", (" a", " b"), (True, False))], scorer.prefill(prefix))
