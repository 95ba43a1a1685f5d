"""Preference optimisation on soft AI labels (`rl.po`, job `po_train`): DPO / IPO / hard-label
losses and gradients against NumPy; summed answer log-probs against a full softmax; pair data;
the parameter digest (sharding-independent, sensitive to one ulp); and the job on the tiny
preset: a rule the labels encode is learnt (the policy's log-prob of rule-following answers
rises, measured before and after), soft labels are fitted at their own odds (margin ->
logit(p)) while hard labels drive the margin up without bound, IPO reaches its own fixed point,
a resumed run exports bitwise the same policy, and bad inputs stop before training."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.checkpoints import loader
from cai_jax.checkpoints.digest import params_digest
from cai_jax.config_defaults import ConfigError
from cai_jax.data import po_pairs
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import DataError
from cai_jax.jobs import po_train
from cai_jax.metrics import read_metrics
from cai_jax.model import decoder
from cai_jax.rl import po
from conftest import simulated_devices_env
from configs_loader import load_config
import tiny_model

PS = [0.0, 0.3, 0.5, 0.6, 0.9, 1.0]


# ------------------------------------------------------------------------------ the losses


def log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def numpy_dpo(ra, rb, p, beta):
  """Soft DPO and its gradient with respect to the two log-ratios (log pi - log pi_ref)."""
  m = beta * (np.asarray(ra, np.float64) - np.asarray(rb, np.float64))
  loss = -(p * log_sigmoid(m) + (1 - p) * log_sigmoid(-m))
  g = beta * (1 / (1 + np.exp(-m)) - p)
  return loss, g, -g


def log_ratios(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(0, 3, n), rng.normal(0, 3, n)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_soft_dpo_loss_and_gradient_match_numpy(beta):
  ra, rb = log_ratios(len(PS) * 4)
  p = np.resize(PS, ra.size)
  loss, ga, gb = numpy_dpo(ra, rb, p, beta)
  f = lambda a, b: po.pair_loss(a, b, jnp.asarray(p), loss="dpo", beta=beta)[0]  # noqa: E731
  ours = f(jnp.asarray(ra, jnp.float32), jnp.asarray(rb, jnp.float32))
  np.testing.assert_allclose(ours, loss, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda a, b: jnp.sum(f(a, b)), argnums=(0, 1))(jnp.asarray(ra, jnp.float32),
                                                              jnp.asarray(rb, jnp.float32))
  np.testing.assert_allclose(g[0], ga, atol=1e-6)
  np.testing.assert_allclose(g[1], gb, atol=1e-6)
  # p = 1 is standard DPO: -log sigmoid(beta (r_w - r_l))
  one = np.asarray(p) == 1.0
  np.testing.assert_allclose(np.asarray(ours)[one], -log_sigmoid(beta * (ra - rb))[one],
                             rtol=1e-5, atol=1e-6)
  # p = 1/2 is indifferent to the order: its gradient pushes the margin towards 0
  half = np.asarray(p) == 0.5
  assert np.all(np.sign(np.asarray(g[0])[half]) == np.sign(ra - rb)[half])


def test_conservative_and_hard_variants():
  ra, rb = log_ratios(len(PS) * 3, seed=1)
  p = np.resize(PS, ra.size)
  eps, beta = 0.1, 0.5
  ours, keep = po.pair_loss(jnp.asarray(ra), jnp.asarray(rb), jnp.asarray(p), loss="dpo",
                            beta=beta, label_smoothing=eps)
  m = beta * (ra - rb)
  target = (1 - eps) * p + eps * (1 - p)
  np.testing.assert_allclose(ours, -(target * log_sigmoid(m) + (1 - target) * log_sigmoid(-m)),
                             rtol=1e-5, atol=1e-6)
  # at p = 1 that is cDPO: (1 - eps) DPO(w, l) + eps DPO(l, w)
  one = p == 1.0
  np.testing.assert_allclose(np.asarray(ours)[one], ((1 - eps) * -log_sigmoid(m)
                                                     + eps * -log_sigmoid(-m))[one], rtol=1e-5)
  assert np.all(np.asarray(keep) == 1.0)
  hard, keep = po.pair_loss(jnp.asarray(ra), jnp.asarray(rb), jnp.asarray(p), loss="hard",
                            beta=beta)
  rounded = (p > 0.5).astype(float)
  np.testing.assert_allclose(hard, -(rounded * log_sigmoid(m) + (1 - rounded) * log_sigmoid(-m)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(keep), (p != 0.5).astype(np.float32))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ipo_matches_its_formula(tau):
  ra, rb = log_ratios(len(PS) * 4, seed=2)
  p = np.resize(PS, ra.size)
  h = ra - rb
  f = lambda a, b: po.pair_loss(a, b, jnp.asarray(p), loss="ipo", beta=tau)[0]  # noqa: E731
  ours = f(jnp.asarray(ra, jnp.float32), jnp.asarray(rb, jnp.float32))
  np.testing.assert_allclose(ours, (h - (p - 0.5) / tau) ** 2, rtol=1e-5, atol=1e-5)
  # hard labels: Azar et al.'s (h_w,l - 1 / (2 tau))^2, from either side of the pair
  one, zero = p == 1.0, p == 0.0
  np.testing.assert_allclose(np.asarray(ours)[one], ((h - 1 / (2 * tau)) ** 2)[one], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ours)[zero], ((-h - 1 / (2 * tau)) ** 2)[zero], rtol=1e-5)
  g = jax.grad(lambda a, b: jnp.sum(f(a, b)), argnums=(0, 1))(jnp.asarray(ra, jnp.float32),
                                                              jnp.asarray(rb, jnp.float32))
  np.testing.assert_allclose(g[0], 2 * (h - (p - 0.5) / tau), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(g[1], -2 * (h - (p - 0.5) / tau), rtol=1e-5, atol=1e-4)


def test_loss_sums_and_metrics():
  beta = 0.5
  logp = np.asarray([[-3.0, -5.0], [-4.0, -2.0], [-1.0, -1.5], [-6.0, -6.0], [-2.0, -9.0]])
  ref = np.asarray([[-3.5, -4.0], [-4.0, -2.5], [-1.0, -1.0], [-6.0, -6.0], [-1.0, -1.0]])
  p = np.asarray([0.9, 0.2, 0.5, 1.0, 0.7])
  w = np.asarray([1.0, 1.0, 1.0, 1.0, 0.0])  # the last row is padding
  total, sums = po.po_loss_sums(jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(p),
                                jnp.asarray(w), loss="dpo", beta=beta)
  r = logp - ref
  loss, _, _ = numpy_dpo(r[:, 0], r[:, 1], p, beta)
  assert float(total) == pytest.approx(float(np.sum(loss[:4])), rel=1e-6)
  assert float(sums["weight"]) == 4 and float(sums["sum_decisive"]) == 3
  # margins towards the labelled-better answer: 0.5 (1.5 - ... ) by hand
  margins = [beta * ((-3 + 3.5) - (-5 + 4)), beta * ((-2 + 2.5) - (-4 + 4)), 0.0]
  assert margins == [0.75, 0.25, 0.0]
  assert float(sums["sum_reward_margin"]) == pytest.approx(1.0, abs=1e-6)
  assert float(sums["sum_correct"]) == 2.5  # two right, one tie at margin 0 (half)
  assert float(sums["sum_chosen_reward"]) == pytest.approx(beta * (0.5 + 0.5 + 0.0), abs=1e-6)
  assert float(sums["sum_rejected_reward"]) == pytest.approx(beta * (-1.0 + 0.0 + 0.0), abs=1e-6)


# ------------------------------------------------------------------------------ the model side


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp("po_tiny")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True)
  return ckpt, loader.load(ckpt, cache_dir=str(folder))


def test_sequence_logprobs_match_a_full_softmax(tiny):
  _, model = tiny
  tok = model.tokenizer
  pairs = [prefs.Preference(f"p{i}", f"\n\nHuman: tell me about {w}\n\nAssistant:",
                            (f" {w} is nice.", f" no{'!' * i}"), 0.7)
           for i, w in enumerate(["cat", "sea", "a very long tree"])]
  seqs = po_pairs.tokenize(pairs, tok, max_length=64, append_eos=True)
  batch = po_pairs.make_batch(seqs + [None], 64)
  ours = np.asarray(po.sequence_logprobs(model.config, model.params,
                                         jax.tree.map(jnp.asarray, batch), chunk_tokens=16))
  for r, x in enumerate(seqs):
    for s in range(2):
      ids = np.asarray(x.ids[s])
      n = len(ids)
      positions, mask = decoder.sequence_inputs(jnp.ones((1, n), bool))
      logits, _ = decoder.Decoder(model.config).apply({"params": model.params},
                                                      jnp.asarray(ids)[None], positions, mask)
      logits = np.asarray(logits[0], np.float64)
      logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
      lp = logits[np.arange(n - 1), ids[1:]] - logz[:-1]
      answer = np.asarray(x.mask[s])[1:]  # position i predicts token i + 1
      expected = float(np.sum(lp[answer]))
      assert ours[r, s] == pytest.approx(expected, abs=2e-4), (r, s)
      # the weighted tokens are the answer and the end id, nothing of the prompt
      assert tok.decode([int(t) for t in ids[np.asarray(x.mask[s])][:-1]]) == \
          pairs[r].responses[s]
      assert ids[np.asarray(x.mask[s])][-1] == tok.eos_id
  assert np.all(ours[3] == 0.0)  # the padding row


def test_pair_batches_resume_where_they_stopped(tiny):
  _, model = tiny
  pairs = [prefs.Preference(f"p{i}", "\n\nHuman: hi\n\nAssistant:", (" a" * (i + 1), " b"), 0.6)
           for i in range(10)]
  seqs = po_pairs.with_reference(po_pairs.tokenize(pairs, model.tokenizer, max_length=32,
                                                   append_eos=True),
                                 {x.id: (-float(i), -1.0) for i, x in enumerate(pairs)})
  it = po_pairs.batches(seqs, 4, seed=3, max_length=32, min_length=16)
  first = [next(it) for _ in range(5)]
  again = po_pairs.batches(seqs, 4, seed=3, max_length=32, min_length=16)
  again.restore(json.loads(json.dumps(first[1][1])))
  for (want, _), (got, _) in zip(first[2:], [next(again) for _ in range(3)]):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  batch = first[0][0]
  longest = max(int(batch["valid"][r, s].sum()) for r in range(4) for s in range(2))
  assert batch["tokens"].shape == (4, 2, max(16, 1 << (longest - 1).bit_length()))
  assert batch["ref_logp"].shape == (4, 2)
  # each row's reference log-probs travel with its own pair (pair i answers ' a' x (i + 1))
  for r in range(4):
    answer = batch["targets"][r, 0][batch["weights"][r, 0] > 0]
    k = model.tokenizer.decode([int(t) for t in answer[:-1]]).count("a")
    assert batch["ref_logp"][r, 0] == -(k - 1)


def test_params_digest_sees_one_ulp_and_ignores_sharding(tiny, tmp_path):
  _, model = tiny
  d = params_digest(model.params)
  assert d == params_digest(jax.tree.map(np.asarray, model.params))
  nudged = jax.tree.map(np.array, model.params)
  x = nudged["layer_0"]["mlp"]["up"]
  x.flat[7] = np.nextafter(x.flat[7], np.float32(np.inf))
  assert params_digest(nudged) != d
  bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), model.params)
  assert params_digest(bf16) != d
  # sharded over 8 devices (fsdp x tensor), the same digest
  np.savez(tmp_path / "p.npz", **{k: np.asarray(v) for k, v in
                                  jax.tree_util.tree_flatten_with_path(model.params)[0] and
                                  {jax.tree_util.keystr(p): v for p, v in
                                   jax.tree_util.tree_leaves_with_path(model.params)}.items()})
  script = f"""
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cai_jax.checkpoints.digest import params_digest
flat = dict(np.load({str(tmp_path / 'p.npz')!r}))
mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("a", "b"))
def place(x):
  spec = [None] * x.ndim
  for i, n in enumerate(x.shape):
    if n % 4 == 0 and "a" not in spec: spec[i] = "a"
    elif n % 2 == 0 and "b" not in spec: spec[i] = "b"
  return jax.device_put(x, NamedSharding(mesh, P(*spec)))
print(params_digest({{k: place(v) for k, v in flat.items()}}))
print(params_digest(flat))
"""
  env = simulated_devices_env(8)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  sharded, single = out.stdout.split()
  assert sharded == single


# ------------------------------------------------------------------------------ the job

WORDS = ["cat", "dog", "sea", "sun", "tree", "moon", "rain", "stone"]


def label_file(path, n, p_rule, seed=0):
  """Pairs whose labelled-better answer follows a rule (' ... is nice.' over ' ... is bad.'),
  the rule's answer first or second at random, p = p_rule towards it."""
  rnd = random.Random(seed)
  with open(path, "w") as f:
    for i in range(n):
      q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 3)))
      good, bad = f" {q} is nice.", f" {q} is bad."
      first = rnd.random() < 0.5
      p = p_rule if first else 1 - p_rule
      f.write(json.dumps({"id": f"pair-{i:03d}",
                          "prompt": f"\n\nHuman: tell me about {q}\n\nAssistant:",
                          "responses": [good, bad] if first else [bad, good],
                          "p_first_better": p, "mode": "mc",
                          "per_principle": [{"principle_id": "p0", "p_first_better": p,
                                             "p_a_orig": p}]}) + "\n")
  return str(path)


def job_config(ckpt, labels, **extra):
  settings = {"model.checkpoint": ckpt, "model.cache_dir": os.path.dirname(ckpt),
              "po_train.labels": labels, "po_train.batch_size": 8, "po_train.max_length": 128,
              "po_train.min_length": 16, "po_train.steps": 30, "po_train.checkpoint_every": 10,
              "po_train.eval_every": 15, "po_train.heldout_fraction": 0.25,
              "po_train.kl_prompts": 4, "po_train.kl_max_new_tokens": 8,
              "po_train.peak_flops": 1e12, "po_train.progress": False, "po_train.beta": 0.5,
              "optim.learning_rate": 3e-3, "optim.warmup_steps": 2}
  settings.update(extra)
  return load_config("po_train", **settings)


def rule_preference(config, params, tokenizer, prompts):
  """Mean over prompts of log pi(' q is nice.') - log pi(' q is bad.') (answers with EOS)."""
  pairs = [prefs.Preference(f"q{i}", f"\n\nHuman: tell me about {q}\n\nAssistant:",
                            (f" {q} is nice.", f" {q} is bad."), 1.0)
           for i, q in enumerate(prompts)]
  batch = po_pairs.make_batch(po_pairs.tokenize(pairs, tokenizer, max_length=128,
                                                append_eos=True), 128)
  lp = np.asarray(po.sequence_logprobs(config, params, jax.tree.map(jnp.asarray, batch)))
  return float(np.mean(lp[:, 0] - lp[:, 1]))


def test_dpo_learns_the_rule_the_labels_encode_and_resumes(tiny, tmp_path):
  ckpt, base = tiny
  labels = label_file(tmp_path / "labels.jsonl", 40, 0.9)
  summary = po_train.run(job_config(ckpt, labels), str(tmp_path / "w"))
  out = tmp_path / "w" / "po_train"
  assert summary["pairs"] == 30 and summary["held_out_pairs"] == 10
  records = read_metrics(out / "metrics.jsonl")
  steps = [r for r in records if "loss" in r]
  assert [r["step"] for r in steps] == list(range(1, 31))
  for r in steps:
    for key in ("loss", "reward_margin", "accuracy", "chosen_reward", "rejected_reward", "lr",
                "grad_norm", "tokens_per_s"):
      assert np.isfinite(r[key]), key
    assert r["reward_margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"],
                                               abs=1e-4)
  # before the first step the policy is its reference: loss log 2, margin 0, KL exactly 0
  first = summary["initial_eval"]
  assert first["eval_heldout_loss"] == pytest.approx(np.log(2), abs=1e-6)
  assert first["eval_heldout_reward_margin"] == 0.0 and first["eval_heldout_accuracy"] == 0.5
  assert first["eval_kl"] == 0.0 and first["eval_kl_k1"] == 0.0
  assert [r["step"] for r in records if "eval_kl" in r] == [0, 15, 30]
  final = summary["final"]
  # measured: held-out accuracy 1.0, margin 2.02, loss 0.33, KL 0.46 on this seed
  assert final["eval_heldout_accuracy"] == 1.0
  assert final["eval_heldout_reward_margin"] > 1.5
  assert final["eval_heldout_loss"] < 0.4
  assert final["eval_kl"] > 0.1
  # the exported policy prefers the rule on prompts it never saw; the starting one did not
  export = loader.load(str(out / "export_hf"), cache_dir=str(tmp_path))
  unseen = ["fish", "a red car", "snow and ice", "the old clock"]
  before = rule_preference(base.config, base.params, base.tokenizer, unseen)
  after = rule_preference(export.config, export.params, export.tokenizer, unseen)
  # measured: -2.20 before (P(rule) over the two answers 0.10), +1.73 after (0.85)
  assert before < 0 < after and after - before > 3.0, (before, after)
  ref = json.loads((out / "reference_logprobs.json").read_text())
  assert ref["model_digest"] == params_digest(base.params) == summary["reference_digest"]
  assert len(ref["logprobs"]) == 40

  # resume: drop the last checkpoint and the export; the rerun reads the stored reference
  # log-probs, continues from step 20 and exports the same bytes
  data = (out / "export_hf" / "model.safetensors").read_bytes()
  shutil.rmtree(out / "checkpoints" / "30")
  shutil.rmtree(out / "export_hf")
  ref_bytes = (out / "reference_logprobs.json").read_bytes()
  again = po_train.run(job_config(ckpt, labels), str(tmp_path / "w"))
  assert again["start_step"] == 20
  assert (out / "export_hf" / "model.safetensors").read_bytes() == data
  assert (out / "reference_logprobs.json").read_bytes() == ref_bytes

  # the stored log-probs belong to that reference: another one is refused, nothing overwritten
  other = tiny_model.write_hf_checkpoint(str(tmp_path / "other"), seed=5, flat_logits=True)
  with pytest.raises(DataError, match=r"reference_logprobs.json: reference log-probs computed "
                                      r"by another model"):
    po_train.run(job_config(ckpt, labels, **{
        "po_train.reference": other,
        "po_train.reference_logprobs": str(out / "reference_logprobs.json")}),
        str(tmp_path / "w2"))
  assert (out / "reference_logprobs.json").read_bytes() == ref_bytes
  # ... and so are log-probs of other token sequences (another max_length cuts the prompts)
  with pytest.raises(DataError, match="reference log-probs of other token sequences"):
    po_train.run(job_config(ckpt, labels, **{
        "po_train.max_length": 40,
        "po_train.reference_logprobs": str(out / "reference_logprobs.json")}),
        str(tmp_path / "w3"))


@pytest.mark.parametrize("loss, expected", [
    ("dpo", np.log(0.75 / 0.25)),  # soft labels fitted at their odds: margin -> logit(p)
    ("ipo", 0.75 - 0.5),           # IPO's fixed point h = (p - 1/2) / tau: margin tau h
    ("hard", None)])               # hard labels: no finite optimum, the margin keeps growing
def test_soft_labels_are_fitted_at_their_odds(tiny, tmp_path, loss, expected):
  ckpt, _ = tiny
  labels = label_file(tmp_path / "labels.jsonl", 40, 0.75, seed=1)
  summary = po_train.run(job_config(ckpt, labels, **{
      "po_train.loss": loss, "po_train.steps": 120, "po_train.kl_prompts": 0,
      "po_train.eval_every": 0, "po_train.export_hf": False, "po_train.checkpoint_every": 1000}),
      str(tmp_path / "w"))
  final = summary["final"]
  # measured (seed 1): dpo 1.100 train / 1.093 held out (logit 0.75 = 1.099); hard 16.6
  if expected is None:
    assert final["eval_train_reward_margin"] > 8.0
  else:
    assert final["eval_train_reward_margin"] == pytest.approx(expected, abs=0.03)
    assert final["eval_heldout_reward_margin"] == pytest.approx(expected, abs=0.05)


def test_bad_inputs_stop_before_training(tiny, tmp_path):
  ckpt, _ = tiny
  labels = label_file(tmp_path / "labels.jsonl", 6, 0.9)
  with pytest.raises(ConfigError, match="po_train.loss must be one of"):
    po_train.run(job_config(ckpt, labels, **{"po_train.loss": "kto"}), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="no training data"):
    po_train.run(job_config(ckpt, ""), str(tmp_path / "w"))
  bad = tmp_path / "bad.jsonl"
  rec = json.loads(open(labels).readline())
  del rec["responses"]
  bad.write_text(open(labels).read() + json.dumps(rec) + "\n")
  with pytest.raises(DataError, match=r"bad.jsonl:7: missing field 'responses'"):
    po_train.run(job_config(ckpt, str(bad)), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # nothing written


def test_human_comparisons_alone(tiny, tmp_path):
  """HH-RLHF chosen/rejected pairs (p = 1 on the chosen side, drawn to either side) train
  without AI labels; the implied accuracy is measured against those sides."""
  ckpt, _ = tiny
  human = tmp_path / "human.jsonl"
  with open(human, "w") as f:
    for i in range(8):
      p = f"\n\nHuman: what about {WORDS[i]}?\n\nAssistant:"
      f.write(json.dumps({"chosen": f"{p} {WORDS[i]} is nice.",
                          "rejected": f"{p} {WORDS[i]} is bad."}) + "\n")
  summary = po_train.run(job_config(ckpt, "", **{
      "po_train.human_comparisons": str(human), "po_train.steps": 4, "po_train.kl_prompts": 0,
      "po_train.export_hf": False, "po_train.batch_size": 4}), str(tmp_path / "w"))
  assert summary["pairs"] == 8 and summary["held_out_pairs"] == 0
  ref = json.loads((tmp_path / "w" / "po_train" / "reference_logprobs.json").read_text())
  assert len(ref["logprobs"]) == 8
  # chosen on the first side for some pairs, the second for others (p = 1 or 0, never 1/2)
  labels = [x.p for x in prefs.read_human_comparisons(str(human), 0)]
  assert set(labels) == {0.0, 1.0}
  steps = [r for r in read_metrics(tmp_path / "w" / "po_train" / "metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["decisive"] == 4 for r in steps)
