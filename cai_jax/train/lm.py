"""The SL objective: next-token negative log-likelihood on the weighted (response) tokens.

Batches come from `cai_jax.data.sl.make_batch`: tokens, targets, weights, valid, all [B, L].
The decoder returns hidden states; `losses.token_logprobs` projects them chunk by chunk through
the output table (`decoder.output_table`), so `[B, L, vocab]` logits never exist.
"""

from __future__ import annotations

import jax.numpy as jnp

from cai_jax.model import decoder
from cai_jax.model.config import DecoderConfig
from cai_jax.train import losses


def hidden_states(config: DecoderConfig, params, tokens_BL, valid_BL):
  positions, mask = decoder.sequence_inputs(valid_BL)
  hidden, _ = decoder.Decoder(config).apply({"params": params}, tokens_BL, positions, mask,
                                         return_hidden=True)
  return hidden


def make_lm_loss(config: DecoderConfig, *, chunk_tokens: int = 1024):
  """loss_fn(params, batch, rng) -> (sum of -log p * weight, {"weight", "sum_correct", ...})."""

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    hidden = hidden_states(config, params, batch["tokens"], batch["valid"])
    logp = losses.token_logprobs(hidden, decoder.output_table(params), batch["targets"],
                                 chunk_tokens=chunk_tokens, dtype=jnp.dtype(config.dtype),
                                 softcap=config.final_softcap)
    loss_sum, weight = losses.weighted_nll(logp, batch["weights"])
    return loss_sum, {"weight": weight, "sum_tokens": jnp.sum(batch["valid"], dtype=jnp.float32)}

  return loss_fn


def naive_lm_loss(config: DecoderConfig):
  """The same objective through full logits: the reference for tests."""

  def loss_fn(params, batch, rng):
    del rng
    hidden = hidden_states(config, params, batch["tokens"], batch["valid"])
    logp = losses.naive_token_logprobs(hidden, decoder.output_table(params), batch["targets"],
                                       dtype=jnp.dtype(config.dtype),
                                       softcap=config.final_softcap)
    loss_sum, weight = losses.weighted_nll(logp, batch["weights"])
    return loss_sum, {"weight": weight, "sum_tokens": jnp.sum(batch["valid"], dtype=jnp.float32)}

  return loss_fn
