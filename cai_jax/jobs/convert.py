"""Job `convert`: write config.model.checkpoint as an HF folder and/or an orbax checkpoint."""

from __future__ import annotations

import os
import shutil

import jax

from cai_jax.checkpoints import hf, orbax_io
from cai_jax.config_defaults import ConfigError
from cai_jax.jobs.common import load_model

FORMATS = ("hf", "orbax")


def run(config, workdir: str) -> dict[str, str]:
  formats = [f.strip() for f in config.convert.formats.split(",") if f.strip()]
  unknown = set(formats) - set(FORMATS)
  if unknown or not formats:
    raise ConfigError(f"convert.formats={config.convert.formats!r}: choose from {FORMATS}")
  model = load_model(config)
  out = {}
  for fmt in formats:
    folder = os.path.join(workdir, "convert", fmt)
    partial = folder + ".partial"  # renamed into place only once complete
    shutil.rmtree(partial, ignore_errors=True)
    if fmt == "hf":
      hf.save_hf_folder(partial, model.config, jax.device_get(model.params), model.tokenizer)
    else:
      orbax_io.save(partial, model.config, model.params, model.tokenizer)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    print(f"wrote {fmt} checkpoint to {folder}", flush=True)
    out[fmt] = folder
  return out
