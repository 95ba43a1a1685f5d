"""The training engine every stage shares: state, the jitted step, and the checkpointed loop.

A step is a pure function `(state, batch) -> (state, metrics)`. The objective is a
`loss_fn(params, batch, rng) -> (loss_sum, sums)` that returns *sums* (and `sums["weight"]`, the
token weight it summed over); the step accumulates those over micro-batches with `lax.scan` and
divides once by the global weight, so a token-weighted mean is exact whatever the micro-batch
split and however many hosts hold the batch. `compile_step` jits it with explicit in/out
shardings and donates the old state.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cai_jax import parallel

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array     # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array      # uint32[2]; split once per step


def init_state(params, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=rng)


def state_specs(param_specs, optimizer: optax.GradientTransformation, abstract_params) -> TrainState:
  """PartitionSpecs of a TrainState: optimizer moments follow their parameter; scalars replicate."""
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_specs = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_specs,
                                    transform_non_params=lambda _: P(),
                                    is_leaf=lambda x: isinstance(x, P))
  return TrainState(step=P(), params=param_specs, opt_state=opt_specs, rng=P())


def abstract_state(shardings: TrainState, optimizer, abstract_params) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target that never materialises a full copy."""
  shapes = jax.eval_shape(lambda p: init_state(p, optimizer, jax.random.PRNGKey(0)),
                          abstract_params)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      shapes, shardings)


def split_micro_batches(batch, num_micro: int, mesh: Mesh | None):
  """[B, ...] -> [M, B/M, ...], micro-batch m holding rows m, m+M, ...: every data shard keeps an
  equal share of each micro-batch, so the split moves no data between devices."""
  def split(x):
    B = x.shape[0]
    y = x.reshape(B // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      spec = P(None, parallel.BATCH_AXES, *([None] * (x.ndim - 1)))
      y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
    return y
  return jax.tree.map(split, batch)


def _tree_norm(tree) -> jax.Array:
  return optax.tree.norm(tree) if hasattr(optax, "tree") else optax.global_norm(tree)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    micro_batches: int = 1, mesh: Mesh | None = None,
                    learning_rate_fn: optax.Schedule | None = None):
  """The pure step. Metrics: step (after the update), loss (weighted mean), grad_norm (before
  clipping), lr (when `learning_rate_fn` is given) and the sums `loss_fn` returns (a leading
  'sum_' dropped from their names)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(state.rng)
    if micro_batches == 1:
      (loss_sum, sums), grads = grad_fn(state.params, batch, step_rng)
    else:
      micro = split_micro_batches(batch, micro_batches, mesh)
      rngs = jax.random.split(step_rng, micro_batches)

      def accumulate(carry, xs):
        grads_acc, loss_acc, sums_acc = carry
        mb, r = xs
        (l, s), g = grad_fn(state.params, mb, r)
        return (jax.tree.map(jnp.add, grads_acc, g), loss_acc + l,
                jax.tree.map(jnp.add, sums_acc, s)), None

      first_mb = jax.tree.map(lambda x: x[0], micro)
      sums_shape = jax.eval_shape(lambda: grad_fn(state.params, first_mb, rngs[0])[0][1])
      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
               jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape))
      (grads, loss_sum, sums), _ = jax.lax.scan(accumulate, zeros, (micro, rngs))
    weight = sums["weight"]
    denom = jnp.maximum(weight, 1e-9)
    # Gradients in each parameter's dtype: dividing bf16 sums by the f32 weight would otherwise
    # promote them, and with them the optimizer moments, changing the state's types each step.
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"step": state.step + 1, "loss": loss_sum / denom,
               "grad_norm": _tree_norm(grads)}
    if learning_rate_fn is not None:
      metrics["lr"] = learning_rate_fn(state.step)
    for k, v in sums.items():
      metrics[k[len("sum_"):] if k.startswith("sum_") else k] = v
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    _check_same_types(state, new_state)
    return new_state, metrics

  return step


def _check_same_types(old: TrainState, new: TrainState) -> None:
  """At trace time: a step must return the state with the types it got (else every call would
  retrace and recompile, and a bf16 state would silently drift to f32)."""
  def check(path, a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
      raise TypeError(f"train step changes {jax.tree_util.keystr(path)} from {a.dtype}{a.shape} "
                      f"to {b.dtype}{b.shape}")
  jax.tree_util.tree_map_with_path(check, old, new)


def make_eval_step(loss_fn: LossFn):
  """`(params, batch) -> sums` (loss_sum included as 'loss_sum'); the caller divides at the end."""
  def step(params, batch):
    loss_sum, sums = loss_fn(params, batch, jax.random.PRNGKey(0))
    return {"loss_sum": loss_sum, **sums}
  return step


def compile_step(step_fn, state_shardings: TrainState, mesh: Mesh):
  """jit with explicit shardings: state in/out as the rules say, batch over the data axes,
  metrics replicated; the input state is donated (updated in place)."""
  return parallel.run_under(mesh, jax.jit(
      step_fn, in_shardings=(state_shardings, NamedSharding(mesh, P(parallel.BATCH_AXES))),
      out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,)))


def compile_eval_step(eval_fn, param_shardings, mesh: Mesh):
  return parallel.run_under(mesh, jax.jit(
      eval_fn, in_shardings=(param_shardings, NamedSharding(mesh, P(parallel.BATCH_AXES))),
      out_shardings=parallel.replicated(mesh)))


def compile_train_and_eval(loss_fn: LossFn, optimizer, state_shardings: TrainState, mesh: Mesh,
                           *, micro_batches: int = 1, learning_rate_fn=None):
  """(the compiled train step, the compiled eval step) of one loss: the two programs of a
  supervised trainer (sl_train, pm_train), also what compile_check compiles for a TPU."""
  step_fn = compile_step(make_train_step(loss_fn, optimizer, micro_batches=micro_batches,
                                         mesh=mesh, learning_rate_fn=learning_rate_fn),
                         state_shardings, mesh)
  return step_fn, compile_eval_step(make_eval_step(loss_fn), state_shardings.params, mesh)


class NonFiniteLoss(RuntimeError):
  pass


class Preempted(Exception):
  """SIGTERM (or a pod preemption notice) arrived; a checkpoint of `step` was written."""

  def __init__(self, step: int):
    super().__init__(f"preempted: saved a checkpoint at step {step}; run the same command again "
                     "to resume")
    self.step = step


class StopFlag:
  """Turns SIGTERM into a flag the loop polls between steps (restored on exit)."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, preemption notices only
      self._old = None
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False


@dataclasses.dataclass(frozen=True)
class Stepper:
  """One step of a trainer, in two phases the loop drives.

  `prepare(state) -> (batch, data position after it)`: the data of the next step; it may depend
  on the state (an on-policy trainer samples from it) and may judge it by raising (a guard).
  `update(state, batch) -> (state, metrics)`: the update; metrics may stay on device.
  `judges_state`: prepare judges the state it reads (PPO's rollout checks the policy the last
  update produced), so a scheduled checkpoint of step n is written only once step n + 1's
  prepare has passed; a guard stop then never leaves the bad state as the latest checkpoint."""
  prepare: Callable[[TrainState], tuple[Any, Any]]
  update: Callable[[TrainState, Any], tuple[TrainState, dict]]
  judges_state: bool = False


def batch_stepper(step_fn, batches: Iterator[tuple[Any, Any]]) -> Stepper:
  """A supervised trainer's steps: the next (batch, position) of an iterator, then `step_fn`."""
  return Stepper(prepare=lambda state: next(batches), update=step_fn)


def _loss_postfix(metrics: Mapping[str, float]) -> dict:
  return {"loss": f"{metrics['loss']:.4f}", "tok_s": f"{metrics.get('tokens_per_s', 0):.0f}"}


@dataclasses.dataclass
class LoopHooks:
  """What the loop calls besides the step; every field optional."""
  save: Callable[[int, TrainState, dict, bool], None] | None = None  # (step, state, data, force)
  should_save: Callable[[int], bool] = lambda step: False
  reached_preemption: Callable[[int], bool] = lambda step: False
  log: Callable[[int, dict], None] | None = None
  evaluate: Callable[[int, TrainState], dict] | None = None
  eval_every: int = 0
  progress: Any = None
  postfix: Callable[[Mapping[str, float]], dict] = _loss_postfix  # the progress bar's numbers


def _finite(metrics: Mapping[str, Any]) -> bool:
  return bool(np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"])))


def train_loop(state: TrainState, steps: Stepper, total_steps: int, hooks: LoopHooks, *,
               start: int | None = None,
               host_metrics: Callable[[dict, float], dict] | None = None) -> TrainState:
  """Runs `steps` from `start` (default: `state.step`) until step `total_steps`; the only
  training loop: every trainer (supervised, preference, PPO) is a `Stepper` it drives.

  Step n's metrics are read while step n+1 runs, except when step n must be saved: then they
  are checked first, so a checkpoint never holds the result of a non-finite step (nor, when the
  stepper judges states, of a state the next step's prepare rejected). SIGTERM saves and raises
  `Preempted`. A step's metrics must hold `loss` and `grad_norm` (checked finite).
  """
  step = int(jax.device_get(state.step)) if start is None else int(start)
  pending = None  # (step, metrics still on device)
  unsaved = None  # (step, state, position): a scheduled save awaiting the next prepare's verdict
  clock = [time.perf_counter()]

  def flush(n, metrics):
    metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items() if k != "step"}
    if not _finite(metrics):
      raise NonFiniteLoss(f"step {n}: loss {metrics['loss']}, grad norm {metrics['grad_norm']} "
                          "(not finite); stopped without saving; the last checkpoint is intact")
    now = time.perf_counter()
    seconds, clock[0] = now - clock[0], now  # the first step's time includes compilation
    if host_metrics is not None:
      metrics.update(host_metrics(metrics, seconds))
    if hooks.log is not None:
      hooks.log(n, metrics)
    if hooks.progress is not None:
      hooks.progress.update(1)
      hooks.progress.set_postfix(refresh=False, **hooks.postfix(metrics))

  with StopFlag() as flag:
    while step < total_steps:
      batch, data_pos = steps.prepare(state)
      if unsaved is not None:  # the state it judged passed: its checkpoint may be written
        hooks.save(*unsaved, False)
        unsaved = None
      state, metrics = steps.update(state, batch)
      step += 1
      if pending is not None:
        flush(*pending)
      pending = (step, metrics)
      preempt = flag.raised if jax.process_count() == 1 else hooks.reached_preemption(step)
      final = preempt or step == total_steps
      must_save = hooks.save is not None and (hooks.should_save(step) or final)
      if must_save:
        flush(*pending)  # a checkpoint never holds the result of a non-finite step
        pending = None
        if steps.judges_state and not final:
          unsaved = (step, state, data_pos)
        else:
          hooks.save(step, state, data_pos, final)
      if hooks.evaluate is not None and hooks.eval_every and step % hooks.eval_every == 0:
        if pending is not None:
          flush(*pending)
          pending = None
        result = hooks.evaluate(step, state)
        if hooks.log is not None and result:
          hooks.log(step, result)
        clock[0] = time.perf_counter()  # evaluation time is not training time
      if preempt:
        raise Preempted(step)
  if pending is not None:
    flush(*pending)
  return state


def tokens_per_second(tokens: float, seconds: float) -> float:
  return tokens / seconds if seconds > 0 else math.nan


def model_shardings(config, mesh: Mesh):
  """NamedShardings of the decoder's parameters under the logical rules."""
  from cai_jax.model import decoder
  return parallel.named(mesh, parallel.param_specs(decoder.abstract_params(config), mesh))


def state_shardings_for(boxed_params, mesh: Mesh, optimizer) -> tuple[TrainState, TrainState]:
  """(NamedShardings of a TrainState, its abstract restore target) for any parameter tree with
  logical-partitioning boxes (a decoder, a reward model, PPO's policy + value)."""
  abstract_params = parallel.unbox(boxed_params)
  specs = state_specs(parallel.param_specs(boxed_params, mesh), optimizer, abstract_params)
  shardings = parallel.named(mesh, specs)
  return shardings, abstract_state(shardings, optimizer, abstract_params)


def state_shardings(config, mesh: Mesh, optimizer) -> tuple[TrainState, TrainState]:
  """`state_shardings_for` the decoder's parameters."""
  from cai_jax.model import decoder
  return state_shardings_for(decoder.abstract_params(config), mesh, optimizer)


def new_state(params, optimizer, rng, shardings: TrainState) -> TrainState:
  """A fresh TrainState built on the devices that hold each shard (params are donated)."""
  return jax.jit(lambda p, r: init_state(p, optimizer, r), out_shardings=shardings,
                 donate_argnums=(0,))(params, rng)
