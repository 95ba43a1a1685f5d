"""The preference-model objective: soft-label Bradley-Terry on pairs of sequences.

Batches come from `cai_jax.data.preferences.make_batch`: tokens/valid [B, 2, L], last [B, 2],
p [B], weight [B]. The two sequences of each pair are run as one [2B, L] batch through
`heads.RewardModel` (a reshape that moves no data between shards), and the loss is
`losses.bt_loss_sums` on the two rewards: sums, so the engine's averaging is exact.

Also here: the shardings of a reward model's TrainState (the engine's `state_shardings` does the
same for the bare decoder), and the reward function evaluation uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cai_jax import parallel
from cai_jax.model import heads
from cai_jax.model.config import DecoderConfig
from cai_jax.train import engine, losses


def pair_rewards(config: DecoderConfig, params, batch) -> jax.Array:
  """[B, 2] float32 rewards of each pair's two sequences."""
  tokens = batch["tokens"]
  B, S, L = tokens.shape
  r = heads.reward_apply(config, params, tokens.reshape(B * S, L),
                         batch["valid"].reshape(B * S, L), batch["last"].reshape(B * S))
  return r.reshape(B, S)


def make_pm_loss(config: DecoderConfig):
  """loss_fn(params, batch, rng) -> (sum of weight * BT loss, {"weight", "sum_correct",
  "sum_decisive", "sum_abs_prob_error", "sum_tokens"})."""

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    r = pair_rewards(config, params, batch)
    loss_sum, sums = losses.bt_loss_sums(r[:, 0], r[:, 1], batch["p"], batch["weight"])
    sums["sum_tokens"] = jnp.sum(batch["valid"], dtype=jnp.float32)
    return loss_sum, sums

  return loss_fn


def make_reward_fn(config: DecoderConfig):
  """(params, batch) -> [B, 2] rewards; compile with `engine.compile_eval_step`."""
  return lambda params, batch: pair_rewards(config, params, batch)


def param_shardings(config: DecoderConfig, mesh: Mesh):
  """NamedShardings of {"decoder", "head"} under the logical rules."""
  return parallel.named(mesh, parallel.param_specs(heads.abstract_params(config), mesh))


def state_shardings(config: DecoderConfig, mesh: Mesh, optimizer
                    ) -> tuple[engine.TrainState, engine.TrainState]:
  """(NamedShardings of the reward model's TrainState, its abstract restore target)."""
  return engine.state_shardings_for(heads.abstract_params(config), mesh, optimizer)
