"""RL-CAI (`rl_train`): the rollout grid, chunked log-probs + entropy, running statistics, prompt
order and guards as small units; the job end to end on the tiny preset with a tiny preference
model (metrics, samples, checkpoints, resume continuing the iteration count, export); the
programmatic target-token reward with the non-finite guard (the bad state is never saved); the
KL ceiling; bad inputs stopping before any compute; and PPO learning a programmatic reward in 8
iterations (experiments/ppo_learns.py runs the longer comparison of two KL coefficients)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import main
from cai_jax.rl import rollout as ro
from cai_jax.checkpoints import loader
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import DataError
from cai_jax.metrics import read_metrics
from cai_jax.model import heads
from cai_jax.tokenizer import Tokenizer
from cai_jax.train import losses
from cai_jax.train.checkpointing import TrainCheckpoints
from cai_jax.train.engine import NonFiniteLoss
from configs_loader import load_config
from fake_gguf import FakeReader
import tiny_model
from conftest import simulated_devices_env

TOPICS = ["cats", "dogs", "the sea", "the sun", "trees", "the moon", "rain", "stones"]


# ------------------------------------------------------------------------------ units


def test_grid_batch_layout():
  prompts = [[2, 10, 11], [2, 12]]
  responses = [[20, 21], [30, 31, 32, 1]]
  slogp = [np.asarray([-0.5, -0.25]), np.asarray([-1.0, -2.0, -3.0, -4.0])]
  g = ro.grid_batch(prompts, responses, slogp, pad_id=0, min_length=8)
  assert g["tokens"].shape == (2, 8)
  np.testing.assert_array_equal(g["tokens"][0], [2, 10, 11, 20, 21, 0, 0, 0])
  np.testing.assert_array_equal(g["targets"][0], [10, 11, 20, 21, 0, 0, 0, 0])
  # position p predicts tokens[p + 1]: the response is predicted at p = P-1 .. P+R-2
  np.testing.assert_array_equal(g["mask"][0], [0, 0, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(g["mask"][1], [0, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(g["end_index"], [3, 4])
  np.testing.assert_array_equal(g["targets"][1][g["mask"][1] > 0], responses[1])
  np.testing.assert_allclose(g["sampler_logp"][1][g["mask"][1] > 0], slogp[1])
  np.testing.assert_array_equal(g["valid"].sum(1), [5, 6])
  # the end index is the last real position of the mask: the score lands on the last token
  np.testing.assert_array_equal(np.asarray(jax.device_get(
      jnp.asarray(ro.ppo.last_index_from_mask(g["mask"])))), g["end_index"])


def test_response_window_logprobs_equal_the_full_grid():
  """Log-probs, entropy and the PPO loss's gradient computed in the response window equal the
  full grid's at every response position (the window only skips the vocabulary projection
  elsewhere), read 0 outside the window, and a response longer than the window is refused."""
  from cai_jax.model import decoder
  cfg = tiny_model.tiny_config()
  params = tiny_model.varied_params(decoder.init_params(cfg, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(1)
  prompts = [[2, *rng.integers(5, 60, n)] for n in (3, 9, 1)]
  responses = [list(rng.integers(5, 60, n)) for n in (4, 6, 2)]
  slogp = [np.zeros(len(r), np.float32) for r in responses]
  full = ro.grid_batch(prompts, responses, slogp, pad_id=0, min_length=16)
  win = ro.grid_batch(prompts, responses, slogp, pad_id=0, min_length=16, window=6)
  assert full["tokens"].shape == (3, 16) and win["window"].shape == (3, 6)
  np.testing.assert_array_equal(win["window"][2], [1, 2, 3, 4, 5, 6])  # P - 1 + j
  mask = full["mask"] > 0
  logp_f, ent_f = ro.policy_logprobs(cfg, params, full, chunk_tokens=8, with_entropy=True)
  logp_w, ent_w = ro.policy_logprobs(cfg, params, win, chunk_tokens=8, with_entropy=True)
  np.testing.assert_allclose(np.asarray(logp_w)[mask], np.asarray(logp_f)[mask], rtol=0,
                             atol=2e-6)  # measured 0 to 1e-6 (other matmul shapes)
  np.testing.assert_allclose(np.asarray(ent_w)[mask], np.asarray(ent_f)[mask], rtol=0, atol=2e-6)
  outside = np.ones_like(mask)
  for b, row in enumerate(win["window"]):
    outside[b, row[row >= 0]] = False
  assert outside.sum() > 0 and not np.asarray(logp_w)[outside].any()
  assert np.abs(np.asarray(logp_f)[outside]).min() > 0  # the full grid computes them all

  # the PPO loss (policy and value) and its gradient are the same with and without the window
  value = {"decoder": params, "head": heads.init_head(cfg, jax.random.PRNGKey(2))}
  loss_fn = ro.make_ppo_loss(cfg, cfg, clip_eps=0.2, clip_eps_value=0.2, vf_coef=0.1,
                             ent_coef=0.01, chunk_tokens=8)
  extra = {"old_logp": np.asarray(logp_f) - 0.05 * full["mask"],
           "old_values": rng.normal(size=(3, 16)).astype(np.float32),
           "advantages": rng.normal(size=(3, 16)).astype(np.float32),
           "returns": rng.normal(size=(3, 16)).astype(np.float32)}
  grads = [jax.grad(lambda p, b=b: loss_fn(p, {**b, **extra}, None)[0])(
      {"policy": params, "value": value}) for b in (full, win)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="longer than the log-prob window"):
    ro.grid_batch(prompts, responses, slogp, pad_id=0, min_length=16, window=5)


@pytest.mark.parametrize("chunk_tokens", [8, 1000])  # chunks of 4 positions; one chunk
def test_logprobs_and_entropy_match_full_logits(chunk_tokens):
  rng = np.random.default_rng(0)
  B, L, D, V = 2, 12, 8, 50
  h = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  t = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  logp, ent = ro.token_logprobs_entropy(h, emb, t, chunk_tokens=chunk_tokens)
  np.testing.assert_allclose(logp, losses.naive_token_logprobs(h, emb, t), atol=1e-5)
  full = jax.nn.log_softmax(jnp.einsum("BLD,VD->BLV", h, emb), axis=-1)
  np.testing.assert_allclose(ent, -jnp.sum(jnp.exp(full) * full, -1), atol=1e-5)
  # and its gradient equals the unchunked one
  g1 = jax.grad(lambda e: jnp.sum(ro.token_logprobs_entropy(h, e, t,
                                                            chunk_tokens=chunk_tokens)[1]))(emb)
  g2 = jax.grad(lambda e: jnp.sum(-jnp.sum(jax.nn.softmax(jnp.einsum("BLD,VD->BLV", h, e), -1)
                                           * jax.nn.log_softmax(jnp.einsum("BLD,VD->BLV", h, e),
                                                                -1), -1)))(emb)
  np.testing.assert_allclose(g1, g2, atol=1e-4)


def test_running_moments_prompt_order_and_target_reward():
  rng = np.random.default_rng(1)
  parts = [rng.normal(3, 2, n) for n in (5, 1, 17)]
  m = ro.RunningMoments()
  for p in parts:
    m.update(p)
  allx = np.concatenate(parts)
  assert m.count == len(allx)
  assert m.mean == pytest.approx(allx.mean()) and m.std == pytest.approx(allx.std())
  m2 = ro.RunningMoments.from_dict(json.loads(json.dumps(m.to_dict())))
  np.testing.assert_allclose(m2.normalize(allx), (allx - allx.mean()) / allx.std(), rtol=1e-5)

  order = ro.PromptOrder(5, seed=3)
  first = order.take(3) + order.take(4)         # crosses into epoch 1
  assert sorted(first[:5]) == list(range(5)) and order.position() == {"epoch": 1, "index": 2}
  again = ro.PromptOrder(5, seed=3)
  again.take(3)
  resumed = ro.PromptOrder(5, seed=3)
  resumed.restore(again.position())
  assert resumed.take(4) == first[3:]

  np.testing.assert_allclose(ro.target_token_scores([[7, 1, 7, 7], [3], [7]], 7),
                             [0.75, 0.0, 1.0])


def test_rollout_guards():
  ok = {"scores": np.zeros(3)}
  kw = dict(kl=1.0, kl_ceiling=5.0, answer_tokens=10.0, min_response_tokens=2,
            collapse_count=0, collapse_patience=3)
  assert ro.rollout_guards(ok, **kw).kind is None
  bad = ro.rollout_guards({"scores": np.zeros(3), "values": np.asarray([0.0, np.nan])}, **kw)
  assert bad.kind == "nonfinite" and bad.message == "non-finite values in the rollout"
  assert ro.rollout_guards(ok, **{**kw, "kl": 5.5}).kind == "kl"
  assert ro.rollout_guards(ok, **{**kw, "kl": 5.5, "kl_ceiling": 0}).kind is None
  count = 0
  kinds = []
  for length in (1.0, 1.5, 3.0, 0.0, 0.5, 1.0):  # below 2 twice, reset, then three times
    g = ro.rollout_guards(ok, **{**kw, "answer_tokens": length, "collapse_count": count})
    kinds.append(g.kind)
    count = g.collapse_count
  assert kinds == [None, None, None, None, None, "collapse"]


# ------------------------------------------------------------------------------ the job


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("rl_assets")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True)
  model = loader.load(ckpt, cache_dir=str(folder))
  tiny_model.write_random_pm(str(folder / "pm"), model, seed=3)
  prompts = folder / "prompts.jsonl"
  with open(prompts, "w") as f:
    for i, t in enumerate(TOPICS):
      f.write(json.dumps({"id": f"p{i}", "prompt": f"\n\nHuman: tell me about {t}\n\n"
                                                   "Assistant:"}) + "\n")
  probes = folder / "probes.jsonl"
  with open(probes, "w") as f:
    for i, t in enumerate(["birds", "snow"]):
      f.write(json.dumps({"id": f"q{i}", "prompt": f"\n\nHuman: what is {t}?\n\n"
                                                   "Assistant:"}) + "\n")
  return {"folder": folder, "ckpt": ckpt, "pm": str(folder / "pm"), "prompts": str(prompts),
          "probes": str(probes), "model": model}


def settings(assets, **extra):
  s = {"model.checkpoint": assets["ckpt"], "model.cache_dir": str(assets["folder"]),
       "rl_train.pm": assets["pm"], "rl_train.prompts": assets["prompts"],
       "rl_train.helpful_prompts": "",  # red-team prompts only (both sets: test_both_prompt_sets)
       "rl_train.iterations": 2, "rl_train.batch_size": 4, "rl_train.minibatch_size": 2,
       "rl_train.ppo_epochs": 1, "rl_train.max_prompt_tokens": 48,
       "rl_train.max_new_tokens": 8, "rl_train.checkpoint_every": 1,
       "rl_train.sample_every": 1, "rl_train.num_samples": 2, "rl_train.progress": False,
       "rl_train.probe_prompts": assets["probes"], "rl_train.probe_count": 2,
       "optim.learning_rate": 1e-3}
  s.update(extra)
  return s


def run(assets, workdir, **extra):
  return main.run(load_config("rl_train", **settings(assets, **extra)), str(workdir))


def latest(workdir):
  return TrainCheckpoints(str(workdir / "rl_train" / "checkpoints"), save_every=1,
                          keep=3).latest_step()


ROLLOUT_KEYS = ("score", "reward_raw", "reward_norm", "reward_total", "kl", "kl_k3", "kl_coef",
                "entropy", "response_length", "answer_tokens", "missing_end_rate",
                "sampler_logprob_gap", "time_rollout_s", "time_scoring_s", "peak_rss_gb")
UPDATE_KEYS = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "loss", "grad_norm", "lr",
               "time_update_s")


def test_end_to_end_with_pm_then_resume(assets, tmp_path):
  extra = {"rl_train.frozen_dtype": "bfloat16", "rl_train.normalize_reward": True,
           "rl_train.adaptive_kl": True, "rl_train.target_kl": 1.0, "rl_train.kl_horizon": 100}
  summary = run(assets, tmp_path, **extra)
  out = tmp_path / "rl_train"
  records = read_metrics(out / "metrics.jsonl")
  assert [r["step"] for r in records] == [0, 1, 2]
  probe0, records = records[0], records[1:]
  assert set(probe0) == {"step", "time", "probe_score", "probe_score_std", "probe_answer_tokens"}
  assert "probe_score" not in records[0] and "probe_score" in records[1]  # the last iteration
  # the probe is the PM's score of the starting policy's greedy answers, computed here without
  # the job: a sampler on the initial checkpoint and the saved PM applied to BOS + prompt + answer
  # + EOS at its last token
  probe_rows = [json.loads(x) for x in (out / "probe.jsonl").read_text().splitlines()]
  assert [(r["iteration"], r["id"]) for r in probe_rows] == [(0, "q0"), (0, "q1"), (2, "q0"),
                                                              (2, "q1")]
  from cai_jax.sampling.sampler import Sampler
  m = assets["model"]
  probe_prompts = [json.loads(x)["prompt"] for x in open(assets["probes"])]
  greedy = Sampler(m.config, m.params, m.tokenizer, max_prompt_length=48, max_batch=2).generate(
      probe_prompts, max_new_tokens=8, stop=("\n\nHuman:",))
  assert [r["answer"] for r in probe_rows[:2]] == greedy.texts
  pm_model = heads.load_pm(assets["pm"], param_dtype="bfloat16")  # rl_train.frozen_dtype here
  tok = m.tokenizer
  expected = []
  for prompt, text in zip(probe_prompts, greedy.texts):
    ids = [tok.bos_id] + tok.encode(prompt, add_bos=False) + tok.encode(text, add_bos=False) + [tok.eos_id]
    expected.append(float(heads.reward_apply(
        pm_model.config, pm_model.params, jnp.asarray([ids], jnp.int32),
        jnp.ones((1, len(ids)), bool), jnp.asarray([len(ids) - 1], jnp.int32))[0]))
  np.testing.assert_allclose([r["score"] for r in probe_rows[:2]], expected, atol=1e-5)
  assert probe0["probe_score"] == pytest.approx(np.mean(expected), abs=1e-5)
  assert summary["probe"] == {"0": probe0["probe_score"], "2": records[1]["probe_score"]}
  assert summary["kl_estimator_in_reward"] == "k1"
  for r in records:
    for key in ROLLOUT_KEYS + UPDATE_KEYS:
      assert key in r and np.isfinite(r[key]), key
    assert r["missing_end_rate"] == 1.0  # random text: every row runs into max_new_tokens
    assert r["reward_raw"] == pytest.approx(r["score"] - 1.0, abs=1e-5)  # missing-end -1
    assert r["sampler_logprob_gap"] < 1e-4
    assert r["optimizer_steps"] == 2 * r["step"]
  # running normalisation: iteration 1's scores are normalised by their own statistics
  assert records[0]["reward_norm"] == pytest.approx(-1.0, abs=1e-5)
  # adaptive KL: KL far below target_kl lowers the coefficient, carried to the next iteration
  assert records[0]["kl_coef"] == pytest.approx(0.05)
  assert records[1]["kl_coef"] == pytest.approx(records[0]["kl_coef_next"])
  assert records[1]["kl_coef"] < 0.05
  # iteration 1: the policy is the reference, up to the reference's bfloat16 rounding
  assert abs(records[0]["kl"]) < 0.05 and records[1]["kl"] != 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))
  samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["iteration"] for s in samples] == [1, 1, 2, 2]
  assert set(samples[0]) >= {"prompt", "response", "score", "reward", "finish_reason"}
  assert sorted(os.listdir(out / "checkpoints"), key=int) == ["1", "2"]
  assert summary["start_iteration"] == 0
  exported = loader.load(summary["export_hf"], cache_dir=str(tmp_path))
  assert exported.config == assets["model"].config
  assert not np.allclose(exported.params["layer_0"]["mlp"]["up"],
                         assets["model"].params["layer_0"]["mlp"]["up"])

  # resume: the same command with more iterations continues after iteration 2
  summary = run(assets, tmp_path, **{**extra, "rl_train.iterations": 3})
  assert summary["start_iteration"] == 2
  records = read_metrics(out / "metrics.jsonl")
  assert [r["step"] for r in records] == [0, 1, 2, 3]  # no second probe of iteration 0
  records = records[1:]
  assert records[2]["optimizer_steps"] == 6 and "probe_score" in records[2]
  assert records[2]["kl_coef"] == pytest.approx(records[1]["kl_coef_next"])  # restored
  assert latest(tmp_path) == 3


VOLATILE = ("time", "peak_rss_gb", "device_peak_gb")  # wall clock and memory: not results


def _results(path):
  """The records of a metrics.jsonl without their clock and memory readings."""
  return [{k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("time_")}
          for r in read_metrics(path)]


def test_sigkill_mid_iteration_resumes_to_the_same_parameters(assets, tmp_path):
  """PPO on the engine's loop, killed with SIGKILL inside iteration 3 (after its rollout passed
  the guards, so checkpoint 2 was just handed to orbax, before the update) and run again, ends
  with the final state of an uninterrupted run, bitwise (policy, value model, optimizer moments,
  step, rng), the same metrics records once each, and the same probe and sample rows."""
  import fault_injection
  extra = {"rl_train.iterations": 4, "rl_train.normalize_reward": True,
           "rl_train.adaptive_kl": True, "rl_train.target_kl": 1.0, "rl_train.kl_horizon": 10,
           "rl_train.probe_every": 2}
  run(assets, tmp_path / "whole", **extra)

  killed = tmp_path / "killed"
  cli = ["--config", "configs/rl_train.py", "--workdir", str(killed),
         *fault_injection.config_flags(settings(assets, **extra))]
  proc = fault_injection.run_killed("cai_jax.rl.ppo_trainer:PPOTrainer.update:3", cli)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert latest(killed) in (1, 2)  # 2 unless the kill beat orbax's commit of it
  assert [r["step"] for r in read_metrics(killed / "rl_train" / "metrics.jsonl")] == [0, 1, 2]
  resumed_from = latest(killed)
  summary = run(assets, killed, **extra)
  assert summary["start_iteration"] == resumed_from

  a, b = tmp_path / "whole" / "rl_train", killed / "rl_train"
  assert _results(a / "metrics.jsonl") == _results(b / "metrics.jsonl")
  assert [r["step"] for r in read_metrics(b / "metrics.jsonl")] == [0, 1, 2, 3, 4]
  for name in ("probe.jsonl", "samples.jsonl"):
    assert (a / name).read_text() == (b / name).read_text(), name
  import orbax.checkpoint as ocp
  final = [jax.tree.leaves(ocp.StandardCheckpointer().restore(str(w / "checkpoints" / "4" /
                                                                   "state")))
           for w in (a, b)]
  assert len(final[0]) == len(final[1]) > 10
  for x, y in zip(*final):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert ((a / "export_hf" / "model.safetensors").read_bytes()
          == (b / "export_hf" / "model.safetensors").read_bytes())


def test_target_token_reward_and_non_finite_guard(assets, tmp_path):
  """Learning rate 0 for the first step (warmup), then 1e30: iteration 1 is fine, iteration 2's
  update blows the parameters up (still finite), iteration 3's rollout is non-finite. The run
  stops naming iteration 3; checkpoint 1 (judged good by iteration 2's rollout) is the latest,
  and the state after iteration 2 was never saved."""
  target = tiny_model.small_tokenizer().piece_to_id(":")
  with pytest.raises(NonFiniteLoss, match=r"^iteration 3: non-finite .* in the rollout; stopped "
                                          r"without saving this state; the latest checkpoint "
                                          r"\(iteration 1\) is the last good one"):
    run(assets, tmp_path, **{"rl_train.reward": "target_token",
                             "rl_train.target_token_id": target, "rl_train.value_init": "policy",
                             "rl_train.pm": "", "rl_train.iterations": 3,
                             "rl_train.minibatch_size": 4, "optim.learning_rate": 1e30,
                             "optim.warmup_steps": 1,
                             "rl_train.num_samples": 4})  # every row in samples.jsonl
  assert latest(tmp_path) == 1
  assert sorted(os.listdir(tmp_path / "rl_train" / "checkpoints")) == ["1"]
  records = read_metrics(tmp_path / "rl_train" / "metrics.jsonl")
  assert [r["step"] for r in records] == [0, 1, 2]  # 0: the probe of the starting policy
  # the probe's score: the mean target-token reward of its greedy answers, each a whole number
  # of ':' tokens over the answer's tokens
  probe = [json.loads(x) for x in (tmp_path / "rl_train" / "probe.jsonl").read_text().splitlines()
           if json.loads(x)["iteration"] == 0]
  assert probe and records[0]["probe_score"] == pytest.approx(np.mean([p["score"] for p in probe]))
  for p in probe:
    assert p["score"] * p["num_tokens"] == pytest.approx(round(p["score"] * p["num_tokens"]))
  records = records[1:]
  samples = [json.loads(x) for x in
             (tmp_path / "rl_train" / "samples.jsonl").read_text().splitlines()]
  # the score is the fraction of ':' among the generated tokens (all 8, none stopped)
  for s in samples:
    assert s["score"] * 8 == pytest.approx(round(s["score"] * 8))
  first = [s["score"] for s in samples if s["iteration"] == 1]
  assert len(first) == 4 and records[0]["score"] == pytest.approx(np.mean(first))
  assert records[0]["kl"] == 0.0
  assert not (tmp_path / "rl_train" / "summary.json").exists()


def test_kl_ceiling_stops_before_the_update(assets, tmp_path):
  # a bfloat16 reference differs from the float32 policy: k3 KL > 0 already at iteration 1
  from cai_jax.jobs.rl_train import GuardStop
  with pytest.raises(GuardStop, match=r"^iteration 1: KL to the reference .* exceeds "
                                      r"kl_ceiling=1e-09.*no checkpoint was written"):
    run(assets, tmp_path, **{"rl_train.frozen_dtype": "bfloat16", "rl_train.kl_estimator": "k3",
                             "rl_train.kl_ceiling": 1e-9})
  assert latest(tmp_path) is None


def other_tokenizer() -> Tokenizer:
  """Same size and specials as tiny_model.small_tokenizer, printable pieces in reverse order."""
  chars = ["\u2581" if c == " " else c for c in map(chr, range(33, 127))] + ["\u2581", "\n"]
  chars = list(dict.fromkeys(chars))[::-1]
  tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + chars
  return Tokenizer.from_gguf_reader(FakeReader({
      "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
      "tokenizer.ggml.scores": [0.0] * 260 + [-1.0] * len(chars),
      "tokenizer.ggml.token_type": [3, 3, 3, 3] + [6] * 256 + [1] * len(chars),
      "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
      "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
      "tokenizer.ggml.add_space_prefix": False}), "other-vocab")


def test_bad_inputs_fail_before_compute(assets, tmp_path):
  w = tmp_path / "w"

  def bad(**extra):
    run(assets, w, **extra)

  with pytest.raises(ConfigError, match="batch_size=6 is not divisible by minibatch_size=4"):
    bad(**{"rl_train.batch_size": 6, "rl_train.minibatch_size": 4})
  with pytest.raises(ConfigError, match="needs rl_train.target_token_id"):
    bad(**{"rl_train.reward": "target_token"})
  with pytest.raises(ConfigError, match="rl_train.sampler_param_dtype: sampling weights in "
                                        "float16 are not supported on cpu"):
    bad(**{"rl_train.sampler_param_dtype": "float16"})
  with pytest.raises(ConfigError, match="probe_prompts .* shares 8 ids with rl_train.prompts"):
    bad(**{"rl_train.probe_prompts": assets["prompts"]})
  with pytest.raises(ConfigError, match="has 2 prompts within max_prompt_tokens, fewer than "
                                        "probe_count=3"):
    bad(**{"rl_train.probe_count": 3})
  with pytest.raises(CheckpointError, match="no preference model there .*reward='pm'"):
    bad(**{"rl_train.pm": str(tmp_path / "missing")})
  with pytest.raises(CheckpointError, match="no preference model there"):
    bad(**{"rl_train.pm": ""})  # '' = WORKDIR/pm_train/pm, absent here
  not_pm = tmp_path / "not_pm"
  not_pm.mkdir()
  with pytest.raises(CheckpointError, match="pm.json"):
    bad(**{"rl_train.pm": str(not_pm)})

  # a PM whose tokenizer has the same size and special ids but other pieces
  model = assets["model"]
  params = {"decoder": model.params, "head": heads.init_head(model.config, jax.random.PRNGKey(0))}
  heads.save_pm(str(tmp_path / "pm_other"), model.config, params, other_tokenizer(),
                {"append_eos": True, "max_length": 128})
  with pytest.raises(CheckpointError, match="tokenizer/vocabulary differs from the policy's: "
                                            "probe text encodes"):
    bad(**{"rl_train.pm": str(tmp_path / "pm_other")})
  # ... and one with another vocabulary size
  big_cfg = model.config.replace(vocab_size=model.config.vocab_size + 8)
  heads.save_pm(str(tmp_path / "pm_big"), big_cfg,
                heads.init_params(big_cfg, jax.random.PRNGKey(0)), model.tokenizer,
                {"append_eos": True, "max_length": 128})
  with pytest.raises(CheckpointError, match=rf"model vocab_size {big_cfg.vocab_size} \(policy "
                                            rf"{model.config.vocab_size}\)"):
    bad(**{"rl_train.pm": str(tmp_path / "pm_big")})

  with pytest.raises(DataError, match=r"8 of 8 prompts are longer than max_prompt_tokens=10 "
                                      r"\(BOS included\): p0 \(\d+ tokens\)"):
    bad(**{"rl_train.max_prompt_tokens": 10})
  assert not (w / "rl_train" / "checkpoints").exists()  # nothing was set up, let alone computed


def test_probe_rows_need_not_divide_the_data_axes(assets, tmp_path):
  """3 probe prompts on a mesh of 2 data shards (2 simulated devices, in a subprocess): the PM
  scores a batch padded to 4 rows and keeps 3, equal to the single-device probe."""
  import subprocess
  import sys
  extra = {"rl_train.iterations": 1, "rl_train.probe_count": 3, "rl_train.export_hf": False,
           "rl_train.checkpoint_every": 0, "rl_train.sample_every": 0}
  probes = tmp_path / "probes3.jsonl"
  with open(probes, "w") as f:
    for i, t in enumerate(["birds", "snow", "wind"]):
      f.write(json.dumps({"id": f"q{i}", "prompt": f"\n\nHuman: what is {t}?\n\nAssistant:"})
              + "\n")
  extra["rl_train.probe_prompts"] = str(probes)
  run(assets, tmp_path / "one", **extra)
  one = read_metrics(tmp_path / "one" / "rl_train" / "metrics.jsonl")[0]
  flags = [f"--config.{k}={v}" for k, v in settings(assets, **extra).items()]
  env = simulated_devices_env(2)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(root, "configs",
                                                                        "rl_train.py"),
       "--workdir", str(tmp_path / "two"), "--config.mesh.data=2", *flags],
      env=env, cwd=root, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  two = read_metrics(tmp_path / "two" / "rl_train" / "metrics.jsonl")[0]
  assert one["step"] == two["step"] == 0
  assert two["probe_score"] == pytest.approx(one["probe_score"], abs=1e-6)


def test_prompt_mix_orders():
  union = ro.PromptMix(3, 2, seed=0)
  assert union.take(5) == ro.PromptOrder(5, 0).take(5)  # one order over both sets
  fixed = ro.PromptMix(3, 2, seed=0, helpful_rows=1)
  first = fixed.take(3)
  assert [i < 3 for i in first] == [True, True, False]  # 2 red-team rows, then 1 helpful
  pos = json.loads(json.dumps(fixed.position()))
  again = ro.PromptMix(3, 2, seed=0, helpful_rows=1)
  again.restore(pos)
  assert again.take(6) == fixed.take(6)
  with pytest.raises(ValueError, match="fixed rl_train.helpful_fraction"):
    ro.PromptMix(3, 2, seed=0, helpful_rows=1).restore(union.position())


def test_both_prompt_sets(assets, tmp_path):
  """Red-team and helpfulness prompts at helpful_fraction 0.5: every batch holds 2 of each, the
  metrics carry per-axis score, reward, KL and row counts, the samples their axis."""
  helpful = tmp_path / "helpful.jsonl"
  with open(helpful, "w") as f:
    for i, t in enumerate(["bread", "rivers", "chess"]):
      f.write(json.dumps({"id": f"h{i}", "prompt": f"\n\nHuman: tell me about {t}\n\n"
                                                  "Assistant:"}) + "\n")
  w = tmp_path / "w"
  run(assets, w, **{"rl_train.helpful_prompts": str(helpful), "rl_train.helpful_fraction": 0.5,
                    "rl_train.iterations": 1, "rl_train.probe_count": 0})
  rec = [r for r in read_metrics(w / "rl_train" / "metrics.jsonl") if r["step"] == 1][0]
  assert rec["rows_harmless"] == 2 and rec["rows_helpful"] == 2
  for k in ("score", "reward_total", "kl"):
    both = (rec[f"{k}_harmless"] + rec[f"{k}_helpful"]) / 2  # equal rows: the plain mean
    assert both == pytest.approx(rec[k], rel=1e-5, abs=1e-7), k
  samples = [json.loads(x) for x in open(w / "rl_train" / "samples.jsonl")]
  assert {s["axis"] for s in samples} <= {"harmless", "helpful"}
  assert all(s["axis"] == ("helpful" if s["id"].startswith("h") else "harmless") for s in samples)
  with pytest.raises(ConfigError, match="too small for helpful_fraction=0.1"):
    run(assets, tmp_path / "x", **{"rl_train.helpful_prompts": str(helpful),
                                   "rl_train.helpful_fraction": 0.1})
  long = tmp_path / "long.jsonl"  # every helpfulness prompt skipped as too long
  long.write_text(json.dumps({"id": "h9", "prompt": "\n\nHuman: " + "why " * 80
                              + "\n\nAssistant:"}) + "\n")
  with pytest.raises(ConfigError, match="asks for 2 helpfulness rows of 4, but 8 red-team and 0"):
    run(assets, tmp_path / "x", **{"rl_train.helpful_prompts": str(long),
                                   "rl_train.helpful_fraction": 0.5,
                                   "rl_train.long_prompts": "skip"})
  with pytest.raises(ConfigError, match="share 3 ids"):
    run(assets, tmp_path / "x", **{"rl_train.helpful_prompts": str(helpful),
                                   "rl_train.prompts": str(helpful)})


def test_ppo_learns_a_programmatic_reward(tmp_path):
  """The job as it ships learns a known reward: the fraction of '.' tokens in the answer, about
  1/360 for the starting tiny model (experiments/ppo_learns.py runs the longer version with two
  KL coefficients). 8 iterations of 32 rollouts x 16 tokens; measured on this CPU: score 0.004
  at iteration 1, 0.90 at 7, 0.93 at 8, KL 11.4 nats per answer (kl_coef 0.01)."""
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"), flat_logits=True)
  target = tiny_model.small_tokenizer().piece_to_id(".")
  prompts = tmp_path / "prompts.jsonl"
  with open(prompts, "w") as f:
    for i, t in enumerate(["cats", "dogs", "the sea", "the sun", "trees", "the moon", "rain",
                           "stones"]):
      f.write(json.dumps({"id": f"p{i}",
                          "prompt": f"\n\nHuman: tell me about {t}\n\nAssistant:"}) + "\n")
  config = load_config("rl_train", **{
      "model.checkpoint": ckpt, "model.cache_dir": str(tmp_path),
      "rl_train.reward": "target_token", "rl_train.target_token_id": target,
      "rl_train.value_init": "policy", "rl_train.prompts": str(prompts),
      "rl_train.helpful_prompts": "", "rl_train.iterations": 8, "rl_train.batch_size": 32,
      "rl_train.minibatch_size": 16, "rl_train.ppo_epochs": 4, "rl_train.max_prompt_tokens": 48,
      "rl_train.max_new_tokens": 16, "rl_train.sampler_batch": 32,
      "rl_train.missing_end_penalty": 0.0, "rl_train.kl_ceiling": 30.0, "rl_train.vf_coef": 0.5,
      "rl_train.kl_coef": 0.01, "rl_train.checkpoint_every": 0, "rl_train.sample_every": 0,
      "rl_train.progress": False, "rl_train.export_hf": False, "rl_train.probe_count": 0,
      "optim.learning_rate": 1e-2})
  main.run(config, str(tmp_path))
  scores = [r["score"] for r in read_metrics(tmp_path / "rl_train" / "metrics.jsonl")
            if "score" in r]
  assert len(scores) == 8
  assert scores[0] < 0.05 and scores[-1] > 0.8, scores
