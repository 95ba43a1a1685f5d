"""The preference model: soft-label Bradley-Terry loss and gradient against NumPy, the explicit
last-token index (pad id == EOS id), pair data (sides, truncation, mixing, resumable position),
real learning on synthetic comparisons (a rule: >= 95% held-out accuracy; soft labels 0.6 / 0.9:
calibrated within 0.05), and the pm_train job on a tiny checkpoint (metrics, checkpoints, resume
to bitwise-equal export, the export loading in the eval job), with bad inputs stopping early."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import DataError
from cai_jax.data.sources import Comparison
from cai_jax.jobs import eval as eval_job
from cai_jax.jobs import pm_train
from cai_jax.metrics import read_metrics
from cai_jax.model import families
from cai_jax.model import heads
from cai_jax.train import engine, losses, optim, pm
from configs_loader import load_config
import tiny_model


# ------------------------------------------------------------------------------ the loss


def numpy_bt(r_a, r_b, p):
  d = np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)
  p = np.asarray(p, np.float64)
  loss = -(p * -np.logaddexp(0.0, -d) + (1 - p) * -np.logaddexp(0.0, d))
  sig = np.exp(-np.logaddexp(0.0, -d))
  return loss, sig - p, p - sig  # loss, d loss / d r_a, d loss / d r_b


def test_bt_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  r_a = np.concatenate([rng.normal(0, 2, 12), [80.0, -80.0, 1e4, -1e4, 0.0, 3.0]])
  r_b = np.concatenate([rng.normal(0, 2, 12), [-20.0, 20.0, -1e4, 1e4, 0.0, 3.0]])
  p = np.concatenate([np.resize([0.0, 0.3, 1.0, 0.5, 0.6, 0.9], 12),
                      [1.0, 0.3, 1.0, 1.0, 0.6, 0.0]])
  loss, ga, gb = numpy_bt(r_a, r_b, p)
  ours = losses.soft_bt_loss(jnp.asarray(r_a, jnp.float32), jnp.asarray(r_b, jnp.float32), p)
  np.testing.assert_allclose(ours, loss, rtol=2e-6, atol=1e-6)
  g = jax.grad(lambda a, b: jnp.sum(losses.soft_bt_loss(a, b, p)), argnums=(0, 1))(
      jnp.asarray(r_a, jnp.float32), jnp.asarray(r_b, jnp.float32))
  np.testing.assert_allclose(g[0], ga, atol=1e-6)
  np.testing.assert_allclose(g[1], gb, atol=1e-6)
  assert np.all(np.isfinite(ours)) and np.all(np.isfinite(g[0]))
  # a 2e4 gap with the label costs nothing, against it 2e4 nats, exactly
  assert float(ours[14]) == 0.0 and float(ours[15]) == 2e4
  assert float(ours[13]) == pytest.approx(30.0, rel=1e-6)
  assert float(ours[16]) == pytest.approx(np.log(2), rel=1e-6)


def test_bt_loss_sums_weights_accuracy():
  r_a = jnp.asarray([2.0, -1.0, 0.5, 3.0, 1.5, 9.0])
  r_b = jnp.asarray([1.0, 1.0, 0.0, 3.5, 1.5, -9.0])
  p = jnp.asarray([1.0, 0.2, 0.5, 0.9, 0.7, 0.0])
  w = jnp.asarray([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # the last row is padding
  total, sums = losses.bt_loss_sums(r_a, r_b, p, w)
  loss, _, _ = numpy_bt(r_a, r_b, p)
  assert float(total) == pytest.approx(float(np.sum(loss[:5])), rel=1e-6)
  assert float(sums["weight"]) == 5
  assert float(sums["sum_decisive"]) == 4  # p = 0.5 has no right answer
  # rows 0 and 1 right, row 3 wrong, row 4 a tie (gap 0: half right)
  assert float(sums["sum_correct"]) == 2.5
  sig = 1 / (1 + np.exp(-(np.asarray(r_a) - np.asarray(r_b))))
  assert float(sums["sum_abs_prob_error"]) == pytest.approx(
      float(np.sum(np.abs(sig - np.asarray(p))[:5])), rel=1e-5)


# ------------------------------------------------------------------------------ pairs and data


class CharTokenizer:
  """One id per character; pad and EOS share id 1 (as some tokenizers do)."""
  bos_id, eos_id, pad_id = 2, 1, 1
  start_ids = [2]  # BOS starts every sequence

  def encode_batch(self, texts, *, add_bos):
    return [([self.bos_id] if add_bos else []) + [10 + ord(c) % 90 for c in t] for t in texts]


@pytest.fixture(scope="module")
def tiny_cfg():
  return families.preset("tiny")


def test_reward_reads_the_explicit_last_token_when_pad_equals_eos(tiny_cfg):
  tok = CharTokenizer()
  pairs = [prefs.Preference("x", "\n\nHuman: hi\n\nAssistant:", (" hello there", " no"), 1.0),
           prefs.Preference("y", "\n\nHuman: why?\n\nAssistant:", (" because", " it is so"), 0.0)]
  examples = prefs.tokenize(pairs, tok, max_length=64, append_eos=True)
  batch = prefs.make_batch(examples + [None], 48, pad_id=tok.pad_id)
  for r, ex in enumerate(examples):
    for s in range(2):
      n = len(ex.ids[s])
      assert batch["last"][r, s] == n - 1
      assert batch["tokens"][r, s, n - 1] == tok.eos_id == tok.pad_id
      # reading "the last non-pad token" would land on the response's last character instead
      nonpad = np.nonzero(batch["tokens"][r, s] != tok.pad_id)[0][-1]
      assert nonpad == n - 2
  assert batch["weight"].tolist() == [1.0, 1.0, 0.0]
  params = jax.jit(heads.init_params, static_argnums=0)(tiny_cfg, jax.random.PRNGKey(0))
  rewards = jax.jit(functools.partial(pm.pair_rewards, tiny_cfg))
  r = np.asarray(rewards(params, batch))
  # other padding (random ids, a longer bucket) gives the same rewards: only `last` is read
  other = prefs.make_batch(examples + [None], 64, pad_id=tok.pad_id)
  other["tokens"] = np.where(other["valid"], other["tokens"],
                             np.random.default_rng(0).integers(3, 100, other["tokens"].shape))
  np.testing.assert_allclose(np.asarray(rewards(params, other))[:2], r[:2], rtol=1e-5, atol=1e-5)
  # and the first sequence scored on its own, unpadded, agrees
  ids = jnp.asarray(examples[0].ids[0])[None]
  alone = jax.jit(functools.partial(heads.reward_apply, tiny_cfg))(
      params, ids, jnp.ones_like(ids, bool), jnp.asarray([ids.shape[1] - 1]))
  np.testing.assert_allclose(r[0, 0], float(alone[0]), rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(r))  # the padding row too


def test_truncation_keeps_bos_and_the_response_end():
  tok = CharTokenizer()
  pair = prefs.Preference("x", "p" * 50, ("abc", "de"), 1.0)
  (ex,) = prefs.tokenize([pair], tok, max_length=10, append_eos=True)
  assert ex.truncated and all(len(ids) <= 10 for ids in ex.ids)
  a, b = ex.ids
  assert a[0] == tok.bos_id and list(a[-4:]) == tok.encode_batch(["abc"], add_bos=False)[0] + [1]
  assert b[0] == tok.bos_id and list(b[-3:]) == tok.encode_batch(["de"], add_bos=False)[0] + [1]
  (short,) = prefs.tokenize([prefs.Preference("y", "p", ("a", "b"), 1.0)], tok, max_length=10,
                            append_eos=False)
  assert not short.truncated and list(short.ids[0]) == [2, 10 + ord("p") % 90, 10 + ord("a") % 90]


def test_human_sides_are_random_and_labels_follow():
  comps = [Comparison(f"c{i}", "\n\nHuman: q\n\nAssistant:", f" good {i}", f" bad {i}")
           for i in range(200)]
  pairs = prefs.from_comparisons(comps, seed=3)
  assert pairs == prefs.from_comparisons(comps, seed=3)  # deterministic
  firsts = [x.p for x in pairs]
  assert 70 < sum(firsts) < 130  # about half each way
  for x in pairs:
    better = x.responses[0] if x.p == 1.0 else x.responses[1]
    assert better.startswith(" good") and x.source == prefs.HUMAN
  assert [x.p for x in prefs.from_comparisons(comps, 3, randomize_sides=False)] == [1.0] * 200


def test_mix_rows_and_resumable_mixed_batches():
  assert prefs.mix_rows(8, 30, 10, 0.25) == {"ai": 6, "human": 2}
  assert prefs.mix_rows(8, 30, 10, -1) == {"ai": 6, "human": 2}   # proportional
  assert prefs.mix_rows(8, 100, 1, -1) == {"ai": 7, "human": 1}   # both present: >= 1 row each
  assert prefs.mix_rows(8, 0, 10, -1) == {"ai": 0, "human": 8}
  assert prefs.mix_rows(8, 5, 0, 0.0) == {"ai": 8, "human": 0}
  with pytest.raises(ConfigError, match="no human comparisons"):
    prefs.mix_rows(8, 5, 0, 0.5)
  with pytest.raises(ConfigError, match="leaves them unused"):
    prefs.mix_rows(8, 5, 5, 0.0)
  with pytest.raises(ConfigError, match="too small for human_fraction=0.05"):
    prefs.mix_rows(8, 5, 5, 0.05)
  with pytest.raises(ConfigError, match="no preference data"):
    prefs.mix_rows(8, 0, 0, -1)
  assert prefs.steps_for_epochs({"ai": 30, "human": 10}, {"ai": 6, "human": 2}, 1) == 5

  ai = [prefs.PairExample((np.arange(3 + i % 5), np.arange(4)), 0.7, source="ai") for i in range(13)]
  human = [prefs.PairExample((np.arange(5), np.arange(2 + i)), float(i % 2), source="human")
           for i in range(5)]
  it = prefs.PreferenceBatches({"ai": ai, "human": human}, {"ai": 6, "human": 2}, seed=1,
                               max_length=64, min_length=8)
  seen = []
  for _ in range(7):
    batch, pos = next(it)
    assert batch["tokens"].shape[:2] == (8, 2) and batch["weight"].sum() == 8
    assert np.sum(batch["p"] == np.float32(0.7)) == 6  # exactly 6 AI rows, 2 human rows
    seen.append(batch)
  assert pos["human"]["epoch"] == 2  # 14 human rows drawn from 5: the small source repeats
  resumed = prefs.PreferenceBatches({"ai": ai, "human": human}, {"ai": 6, "human": 2}, seed=1,
                                    max_length=64, min_length=8)
  first = prefs.PreferenceBatches({"ai": ai, "human": human}, {"ai": 6, "human": 2}, seed=1,
                                  max_length=64, min_length=8)
  for _ in range(4):
    _, pos4 = next(first)
  resumed.restore(json.loads(json.dumps(pos4)))
  for k in range(4, 7):
    batch, _ = next(resumed)
    for key in batch:
      np.testing.assert_array_equal(batch[key], seen[k][key])


# ------------------------------------------------------------------------------ learning

BOS, EOS, X = 2, 1, 7
KIND = {0.6: 8, 0.9: 9}


def _response(rng, count, n=10):
  words = rng.integers(10, 30, n)
  words[rng.choice(n, count, replace=False)] = X
  return words


def _seq(prompt, response):
  return np.concatenate([[BOS], prompt, response, [EOS]]).astype(np.int32)


def rule_pairs(rng, n):
  """The response with more X tokens is preferred (counts differ; sides random)."""
  out = []
  for _ in range(n):
    ca, cb = rng.choice(4, 2, replace=False)
    prompt = rng.integers(10, 30, 3)
    out.append(prefs.PairExample((_seq(prompt, _response(rng, ca)), _seq(prompt, _response(rng, cb))),
                                 1.0 if ca > cb else 0.0))
  return out


def soft_pairs(rng, n):
  """A prompt token marks the kind; the answer holding X is preferred with p = 0.6 or 0.9."""
  out, kinds = [], []
  for _ in range(n):
    p = float(rng.choice([0.6, 0.9]))
    prompt = np.concatenate([[KIND[p]], rng.integers(10, 30, 2)])
    with_x, without = _seq(prompt, _response(rng, 2)), _seq(prompt, _response(rng, 0))
    if rng.random() < 0.5:
      out.append(prefs.PairExample((with_x, without), p))
      kinds.append((p, True))
    else:
      out.append(prefs.PairExample((without, with_x), 1.0 - p))
      kinds.append((p, False))
  return out, kinds


LEARN_STEPS, LEARN_BATCH = 150, 32


@pytest.fixture(scope="module")
def trainer(tiny_cfg):
  """One compiled step (and initial parameters) shared by the learning tests."""
  mesh = parallel.make_mesh({"data": -1})
  opt_cfg = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=20, total_steps=LEARN_STEPS, end_factor=0.05, b1=0.9,
      b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=1.0, decay_norms=False,
      decay_embedding=False))
  optimizer = optim.make_optimizer(opt_cfg)
  shardings, _ = pm.state_shardings(tiny_cfg, mesh, optimizer)
  step = engine.compile_step(engine.make_train_step(pm.make_pm_loss(tiny_cfg), optimizer,
                                                    mesh=mesh), shardings, mesh)
  init = jax.device_get(jax.jit(heads.init_params, static_argnums=0)(
      tiny_cfg, jax.random.PRNGKey(0)))

  def train(examples, seed):
    state = engine.new_state(jax.tree.map(jnp.asarray, init), optimizer,
                             jax.random.PRNGKey(seed), shardings)
    batches = prefs.PreferenceBatches({"ai": examples}, {"ai": LEARN_BATCH}, seed=seed,
                                      max_length=16, min_length=16)
    for _ in range(LEARN_STEPS):
      batch, _ = next(batches)
      state, _ = step(state, parallel.global_batch(batch, mesh))
    return state.params
  return train


def predict(cfg, params, examples):
  fn = jax.jit(pm.make_reward_fn(cfg))
  r = np.concatenate([np.asarray(fn(params, prefs.make_batch(examples[i:i + 64], 16)))
                      for i in range(0, len(examples), 64)])
  return 1.0 / (1.0 + np.exp(-(r[:, 0] - r[:, 1])))


def test_learns_a_rule_to_95_percent_held_out(tiny_cfg, trainer):
  rng = np.random.default_rng(0)
  train_set, held_out = rule_pairs(rng, 2048), rule_pairs(rng, 512)
  params = trainer(train_set, seed=0)
  q = predict(tiny_cfg, params, held_out)
  labels = np.asarray([x.p for x in held_out])
  accuracy = np.mean((q > 0.5) == (labels > 0.5))
  assert accuracy >= 0.95, accuracy


def test_soft_labels_are_calibrated(tiny_cfg, trainer):
  rng = np.random.default_rng(1)
  train_set, _ = soft_pairs(rng, 2048)
  held_out, kinds = soft_pairs(rng, 512)
  params = trainer(train_set, seed=1)
  q = predict(tiny_cfg, params, held_out)
  p_x = np.asarray([qi if x_first else 1 - qi for qi, (_, x_first) in zip(q, kinds)])
  for p in (0.6, 0.9):
    sel = np.asarray([k == p for k, _ in kinds])
    assert abs(float(np.mean(p_x[sel])) - p) <= 0.05, (p, np.mean(p_x[sel]))
    assert float(np.mean(np.abs(p_x[sel] - p))) <= 0.05  # pair by pair, not just on average


# ------------------------------------------------------------------------------ the job

WORDS = ["cat", "dog", "sea", "sun", "tree", "moon", "rain", "stone"]


def label_record(i, prompt, a, b, p):
  return {"id": f"pair-{i}", "prompt": prompt, "responses": [a, b], "p_first_better": p,
          "mode": "mc", "per_principle": [{"principle_id": "p0", "p_first_better": p,
                                           "p_a_orig": p, "p_a_swapped": 1 - p}],
          "provenance": {}}


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("pm_data")
  rnd = random.Random(0)
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"))

  def prompt():
    return f"\n\nHuman: tell me about {rnd.choice(WORDS)}\n\nAssistant:"

  def answer(polite):
    words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 6)))
    return f" {words}, thank you." if polite else f" {words}!!"

  with open(folder / "labels.jsonl", "w") as f:
    for i in range(24):
      pol = rnd.random() < 0.5
      f.write(json.dumps(label_record(i, prompt(), answer(pol), answer(not pol),
                                      0.8 if pol else 0.2)) + "\n")
  for name, n in (("human.jsonl", 16), ("human_test.jsonl", 6)):
    with open(folder / name, "w") as f:
      for _ in range(n):
        p = prompt()
        f.write(json.dumps({"chosen": p + answer(True), "rejected": p + answer(False)}) + "\n")
  return {"ckpt": ckpt, "labels": str(folder / "labels.jsonl"),
          "human": str(folder / "human.jsonl"), "human_test": str(folder / "human_test.jsonl")}


def job_config(files, **extra):
  settings = {"model.checkpoint": files["ckpt"], "model.cache_dir": os.path.dirname(files["ckpt"]),
              "pm_train.ai_labels": files["labels"], "pm_train.human_comparisons": files["human"],
              "pm_train.human_fraction": 0.5, "pm_train.eval_comparisons": files["human_test"],
              "pm_train.batch_size": 4, "pm_train.max_length": 64, "pm_train.min_length": 16,
              "pm_train.steps": 6, "pm_train.checkpoint_every": 2, "pm_train.eval_every": 3,
              "pm_train.eval_batch_size": 4, "pm_train.peak_flops": 1e12,
              "pm_train.progress": False, "optim.learning_rate": 1e-3, "optim.warmup_steps": 1}
  settings.update(extra)
  return load_config("pm_train", **settings)


def test_pm_train_job_resumes_exports_and_eval_loads_it(job_files, tmp_path):
  summary = pm_train.run(job_config(job_files), str(tmp_path))
  out = tmp_path / "pm_train"
  assert summary["steps"] == 6 and summary["start_step"] == 0
  assert summary["rows_per_batch"] == {"ai": 2, "human": 2}
  assert summary["pairs"] == {"ai": 24, "human": 16}
  records = read_metrics(out / "metrics.jsonl")
  train_recs = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_recs] == list(range(1, 7))
  for key in ("loss", "accuracy", "abs_prob_error", "grad_norm", "lr", "tokens_per_s", "mfu"):
    assert all(np.isfinite(r[key]) for r in train_recs), key
  # held-out evaluations: before the first step, then every eval_every=3 steps
  assert [r["step"] for r in records if "eval_human_accuracy" in r] == [0, 3, 6]
  assert summary["initial_eval"]["eval_human_loss"] == pytest.approx(np.log(2), abs=1e-6)
  assert sorted(os.listdir(out / "checkpoints"), key=int) == ["2", "4", "6"]
  export = out / "pm"
  assert sorted(os.listdir(export)) == ["decoder", "head.npz", "pm.json"]
  first = {n: (export / n).read_bytes() for n in ("head.npz", "decoder/model.safetensors")}
  loaded = heads.load_pm(str(export))
  assert loaded.settings["append_eos"] is True and loaded.settings["max_length"] == 64
  from cai_jax.checkpoints import loader  # the export differs from the starting checkpoint
  base = loader.load(job_files["ckpt"], cache_dir=str(tmp_path))
  assert not np.allclose(loaded.params["decoder"]["layer_0"]["mlp"]["up"],
                         base.params["layer_0"]["mlp"]["up"])

  # resume: drop the last checkpoint and the export; the rerun continues from step 4, redoes
  # steps 5 and 6 with the same losses, and logs each step once (the lost steps' records are
  # replaced, not duplicated)
  before = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
  shutil.rmtree(out / "checkpoints" / "6")
  shutil.rmtree(export)
  again = pm_train.run(job_config(job_files), str(tmp_path))
  assert again["start_step"] == 4
  for name, data in first.items():
    assert (export / name).read_bytes() == data, name
  after = [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
  assert [s for s, _ in after] == list(range(1, 7))
  assert dict(after) == before

  # the eval job reads the export
  config = load_config("eval", **{"eval.comparisons": job_files["human_test"],
                                  "eval.progress": False, "eval.batch_size": 4})
  report = eval_job.run(config, str(tmp_path))
  result = report["comparisons"][job_files["human_test"]]
  items = json.loads((tmp_path / "eval" / f"pm_{os.path.basename(job_files['human_test'])[:-6]}"
                                              ".json").read_text())["items"]
  gaps = np.asarray([x["r_better"] - x["r_worse"] for x in items])  # chosen minus rejected
  assert result["n"] == 6 == len(gaps)
  assert result["accuracy"] == pytest.approx(np.mean(gaps > 0) + 0.5 * np.mean(gaps == 0))
  assert sum(b["count"] for b in result["calibration"]["bins"]) == 12
  assert os.path.isfile(result["reliability_png"])

  # and pm_train can continue from the exported PM (head included)
  cont = pm_train.run(job_config(job_files, **{"model.checkpoint": str(export),
                                               "pm_train.steps": 1, "pm_train.export": False}),
                      str(tmp_path / "continue"))
  assert cont["steps"] == 1


def test_bad_inputs_fail_before_training(job_files, tmp_path):
  bad = tmp_path / "bad_labels.jsonl"
  good_line = open(job_files["labels"]).readline()
  rec = json.loads(good_line)
  rec["id"], rec["p_first_better"] = "other", 1.5
  bad.write_text(good_line + json.dumps(rec) + "\n")
  with pytest.raises(DataError, match=r"bad_labels.jsonl:2: p_first_better must be a "
                                      r"probability in \[0, 1\], got 1.5"):
    pm_train.run(job_config(job_files, **{"pm_train.ai_labels": str(bad)}), str(tmp_path / "w"))
  rec["p_first_better"], rec["per_principle"][0]["p_a_orig"] = 0.5, -0.1
  bad.write_text(good_line + json.dumps(rec) + "\n")
  with pytest.raises(DataError, match=r"bad_labels.jsonl:2: per_principle\[0\]: p_a_orig"):
    pm_train.run(job_config(job_files, **{"pm_train.ai_labels": str(bad)}), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="no training data"):
    pm_train.run(job_config(job_files, **{"pm_train.ai_labels": "",
                                          "pm_train.human_comparisons": ""}), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="human_fraction=1.5 must be in"):
    pm_train.run(job_config(job_files, **{"pm_train.human_fraction": 1.5}), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="not divisible by micro_batches=3"):
    pm_train.run(job_config(job_files, **{"pm_train.micro_batches": 3}), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "pm_train" / "checkpoints" / "1").exists()


def test_pm_starts_at_no_preference_on_near_half_labels(job_files, tmp_path):
  """AI labels from a small feedback model sit near 0.5 (0.46-0.53 in the quickstart). The
  default head (zeros) makes every reward gap 0, so the loss before any update, on training and
  held-out pairs, is log 2 and held-out accuracy 0.5 (ties count half)."""
  rnd = random.Random(1)
  labels = tmp_path / "near_half.jsonl"
  with open(labels, "w") as f:
    for i in range(16):
      p = f"\n\nHuman: tell me about {rnd.choice(WORDS)}\n\nAssistant:"
      a, b = (" " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 8)))
              for _ in range(2))
      f.write(json.dumps(label_record(i, p, a, b, round(rnd.uniform(0.46, 0.54), 3))) + "\n")

  def start(workdir, **extra):
    summary = pm_train.run(job_config(
        job_files, **{"pm_train.ai_labels": str(labels), "pm_train.human_comparisons": "",
                      "pm_train.eval_comparisons": "", "pm_train.human_fraction": 0.0,
                      "pm_train.heldout_fraction": 0.25,
                      "pm_train.steps": 1, "pm_train.export": False, **extra}), str(workdir))
    return summary

  summary = start(tmp_path / "zero")
  assert summary["pairs"] == {"ai": 12} and summary["held_out_pairs"] == {"ai": 4}
  first = summary["initial_eval"]
  for key in ("eval_ai_loss", "eval_train_ai_loss"):
    assert abs(first[key] - np.log(2)) < 0.05, (key, first[key])
    assert first[key] == pytest.approx(np.log(2), abs=1e-6)  # a zero head: exactly log 2
  assert first["eval_ai_accuracy"] == 0.5 and first["eval_train_ai_accuracy"] == 0.5
  records = read_metrics(tmp_path / "zero" / "pm_train" / "metrics.jsonl")
  assert records[0]["step"] == 0 and records[1]["loss"] == pytest.approx(np.log(2), abs=1e-6)

  # The old default, a random head (scale 1), does not start at no preference: 0.6949 here on
  # the tiny model (whose final hidden states are small); 1.29 held out and 1.58 on the training
  # pairs of Gemma 3 270M's quickstart labels.
  random_head = start(tmp_path / "random", **{"pm_train.head_init_scale": 1.0})["initial_eval"]
  assert abs(random_head["eval_train_ai_loss"] - np.log(2)) > 1e-3


# ------------------------------------------------------------------------------ two axes


def test_split_ai_rows():
  sizes = {"ai_harmless": 30, "ai_helpful": 10}
  assert prefs.split_ai_rows(4, sizes, "") == {"ai_harmless": 3, "ai_helpful": 1}
  assert prefs.split_ai_rows(4, sizes, "harmless=1,helpful=1") == {"ai_harmless": 2,
                                                                   "ai_helpful": 2}
  assert prefs.split_ai_rows(6, sizes, "harmless=1,helpful=2") == {"ai_harmless": 2,
                                                                   "ai_helpful": 4}
  assert prefs.split_ai_rows(3, {"ai": 5}, "") == {"ai": 3}
  # a small axis still gets a row per batch; fewer rows than axes cannot hold them all
  assert prefs.split_ai_rows(2, {"ai_harmless": 99, "ai_helpful": 1}, "") == {
      "ai_harmless": 1, "ai_helpful": 1}
  with pytest.raises(ConfigError, match="leave no row for axis helpful"):
    prefs.split_ai_rows(1, {"ai_harmless": 99, "ai_helpful": 1}, "")
  with pytest.raises(ConfigError, match=r"missing \['helpful'\]"):
    prefs.split_ai_rows(4, sizes, "harmless=1")
  with pytest.raises(ConfigError, match=r"no labels of \['caveats'\]"):
    prefs.split_ai_rows(4, sizes, "harmless=1,helpful=1,caveats=1")
  labels = [prefs.Preference(str(i), "", ("a", "b"), 1.0, prefs.AI, "", a)
            for i, a in enumerate(["harmless", "helpful", "harmless"])]
  assert {k: len(v) for k, v in prefs.ai_sources(labels).items()} == {"ai_harmless": 2,
                                                                      "ai_helpful": 1}
  assert list(prefs.ai_sources(labels[:1])) == ["ai"]


def test_pm_train_two_axes_reports_each(job_files, tmp_path):
  """Labels of two axes: each axis is its own source with its own rows per batch, held out and
  evaluated per axis (and together), with the final PM's calibration per axis."""
  tagged = tmp_path / "labels.jsonl"
  lines = open(job_files["labels"]).read().splitlines()
  tagged.write_text("".join(
      json.dumps({**json.loads(x), "axis": "helpful" if i % 3 == 0 else "harmless"}) + "\n"
      for i, x in enumerate(lines)))
  summary = pm_train.run(job_config(job_files, **{
      "pm_train.ai_labels": str(tagged), "pm_train.human_comparisons": "",
      "pm_train.human_fraction": -1.0, "pm_train.eval_comparisons": "",
      "pm_train.heldout_fraction": 0.34, "pm_train.steps": 2, "pm_train.checkpoint_every": 0,
      "pm_train.axis_fractions": "harmless=1,helpful=1"}), str(tmp_path))
  assert summary["rows_per_batch"] == {"ai_harmless": 2, "ai_helpful": 2, "human": 0}
  held = summary["held_out_pairs"]
  assert set(held) == {"ai_harmless", "ai_helpful"} and sum(held.values()) > 0
  assert sum(held.values()) + sum(summary["pairs"].values()) == 24
  final = summary["final"]
  for name in ("ai", "ai_harmless", "ai_helpful"):
    assert np.isfinite(final[f"eval_{name}_loss"]), name
  # the combined AI loss is the pair-weighted mean of the axes' losses
  want = sum(final[f"eval_ai_{a}_loss"] * held[f"ai_{a}"] for a in ("harmless", "helpful")) \
      / sum(held.values())
  assert final["eval_ai_loss"] == pytest.approx(want, rel=1e-6)
  for a in ("ai_harmless", "ai_helpful"):
    cal = summary["calibration"][a]
    assert cal["n"] == held[a] and cal["calibration"]["n"] == 2 * held[a]
    assert os.path.exists(cal["reliability_png"])
