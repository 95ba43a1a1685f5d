"""Small pieces every job uses: load the configured model, find the SL-CAI policy, read the
sampling settings, open a progress bar."""

from __future__ import annotations

import os

from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.progress import progress  # noqa: F401 - the jobs' progress bar


def sampling_mesh(config):
  """The mesh a sampling / scoring job spreads over: the devices of this process, with
  config.mesh where it fits them (`parallel.sampling_mesh_spec`), parameters placed as in
  training and rows over the data axes; None on one device or without a `mesh` section.
  With several processes each samples on its own devices and the jobs split their records
  between processes (`record_split`)."""
  import jax

  from cai_jax import parallel
  spec = config.get("mesh")
  if spec is None or jax.local_device_count() == 1:
    return None
  devices = jax.local_devices()
  chosen = parallel.sampling_mesh_spec(dict(spec), len(devices))
  if chosen != dict(spec):
    print(f"{config.job}: mesh {dict(spec)} does not fit this process's {len(devices)} devices; "
          f"sampling on {chosen}", flush=True)
  mesh = parallel.make_mesh(chosen, devices=devices)
  return mesh if mesh.size > 1 else None


def weights_options(m, **overrides) -> dict:
  """The keyword arguments `loader.load` and `heads.load_pm` take from config.model (the
  parameter and activation dtypes and the decoder's layer layout), so that every job reads a
  checkpoint the same way; `overrides` replace some (a frozen model's param_dtype, say)."""
  return {"param_dtype": m.param_dtype, "dtype": m.dtype,
          "scan_layers": bool(m.get("scan_layers", False)), **overrides}


def check_sampling_dtype(field: str, dtype: str) -> None:
  """A config field naming sampling weights ('' = the model's own) holds a dtype the sampler
  takes on this backend; else a ConfigError naming the field, before anything is loaded."""
  import jax

  from cai_jax.sampling import sampler
  if not dtype:
    return
  if dtype not in sampler.SAMPLING_PARAM_DTYPES:
    raise ConfigError(f"{field} must be '' or one of {sampler.SAMPLING_PARAM_DTYPES}, got "
                      f"{dtype!r}")
  try:
    sampler.check_sampling_dtype(dtype, jax.default_backend())
  except ValueError as e:
    raise ConfigError(f"{field}: {e}") from None


def load_model(config, mesh=None, checkpoint: str | None = None) -> loader.LoadedModel:
  """config.model (or `checkpoint` with config.model's dtypes), its parameters placed on `mesh`
  as in training when one is given. For the sampling and scoring jobs that call this, weights
  stored narrower than model.dtype (e.g. `pipeline.sampling_param_dtype` = bfloat16 beside
  float32 activations) go into the matmuls as stored, not upcast (`narrow_matmuls`)."""
  m = config.model
  shardings_for = None
  if mesh is not None:
    from cai_jax.train import engine
    shardings_for = lambda cfg: engine.model_shardings(cfg, mesh)  # noqa: E731
  return loader.load(checkpoint or m.checkpoint, cache_dir=os.path.expanduser(m.cache_dir),
                     shardings_for=shardings_for, narrow_matmuls=True, **weights_options(m))


def conversation_format(config, tokenizer):
  """The conversation format (`conversation.format`: 'hh' or 'chat') for this tokenizer, checked
  before any compute: a 'chat' format on a checkpoint without a chat template is a ConfigError."""
  from cai_jax.constitution.conversation_format import make_format
  section = config.get("conversation")
  name = section.format if section is not None else "hh"
  try:
    return make_format(name, tokenizer)
  except ValueError as e:
    raise ConfigError(f"conversation.format: {e}") from None


SL_EXPORT = os.path.join("sl_train", "export_hf")


def policy_checkpoint(config, workdir: str) -> str:
  """config.model.checkpoint, or '' -> WORKDIR/sl_train/export_hf (the SL-CAI model)."""
  if config.model.checkpoint:
    return config.model.checkpoint
  path = os.path.join(workdir, SL_EXPORT)
  if not os.path.isdir(path):
    raise ConfigError(f"no policy: {path} does not exist. Run sl_train in this workdir first, "
                      "or set --config.model.checkpoint=... (an HF folder such as "
                      "RUN/sl_train/export_hf, 'gemma3-270m', a .gguf or an orbax folder)")
  return path


def sampling_strategy(section, name: str, temperature="temperature", top_k="top_k",
                      top_p="top_p"):
  """The Greedy/Sampling strategy a config section's fields describe; bad values -> ConfigError
  naming the fields."""
  from cai_jax.sampling.strategies import from_settings
  k = section[top_k] if top_k else 0
  try:
    return from_settings(section[temperature], k, section[top_p])
  except ValueError as e:
    fields = "/".join(f for f in (temperature, top_k, top_p) if f)
    raise ConfigError(f"{name}.{fields}: {e}") from None
