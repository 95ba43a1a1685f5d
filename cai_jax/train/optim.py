"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import optax

from cai_jax.config_defaults import ConfigError


def schedule(cfg) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine decay to `learning_rate * end_factor`
  at `total_steps`."""
  total = int(cfg.total_steps)
  warmup = int(cfg.warmup_steps)
  if total <= 0:
    raise ConfigError(f"optim total_steps={total} must be positive")
  if not 0 <= warmup <= total:
    raise ConfigError(f"optim warmup_steps={warmup} must be in [0, total_steps={total}]")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(cfg.learning_rate), warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=float(cfg.learning_rate) * float(cfg.end_factor))


def decay_mask(params, decay_norms: bool = False, decay_embedding: bool = True):
  """True where weight decay applies: matrices, optionally the embedding, never norm scales."""
  def rule(path, _):
    names = [getattr(p, "key", str(p)) for p in path]
    if names[-1] == "scale":
      return decay_norms
    if names[-1] == "embedding":
      return decay_embedding
    return True
  return jax.tree_util.tree_map_with_path(rule, params)


def scale_subtree(name: str, factor: float) -> optax.GradientTransformation:
  """Multiplies the updates of every parameter under a top-level key `name` by `factor` (no
  state): a learning rate of its own for one part of the model, e.g. a preference model's
  scalar head beside its pretrained decoder."""

  def update(updates, state, params=None):
    del params
    return {k: (jax.tree.map(lambda u: u * factor, v) if k == name else v)
            for k, v in updates.items()}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def for_steps(cfg, total_steps: int, *, subtree_lr_scale: dict[str, float] | None = None):
  """(a resolved copy of the optimizer config with `total_steps` filled in, its optimizer): what
  each trainer builds once it knows how many steps it will run."""
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.total_steps = total_steps
  return cfg, make_optimizer(cfg, subtree_lr_scale=subtree_lr_scale)


def make_optimizer(cfg, *, subtree_lr_scale: dict[str, float] | None = None
                   ) -> optax.GradientTransformation:
  """`cfg` fields: learning_rate, warmup_steps, total_steps, end_factor, b1, b2, eps,
  weight_decay, clip_norm (0 = off), decay_norms, decay_embedding. `subtree_lr_scale`
  ({top-level key: factor}) scales the learning rate of those parameters (factor 1: nothing
  added, so the optimizer state is the plain one)."""
  parts = []
  if float(cfg.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  parts.append(optax.adamw(
      schedule(cfg), b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
      weight_decay=float(cfg.weight_decay),
      mask=lambda p: decay_mask(p, bool(cfg.decay_norms), bool(cfg.decay_embedding))))
  for name, factor in (subtree_lr_scale or {}).items():
    if float(factor) != 1.0:
      parts.append(scale_subtree(name, float(factor)))
  return optax.chain(*parts)
