"""Small pieces every job uses: load the configured model, open a progress bar."""

from __future__ import annotations

import os
import sys

from cai_jax.checkpoints import loader


def load_model(config) -> loader.LoadedModel:
  m = config.model
  return loader.load(m.checkpoint, cache_dir=os.path.expanduser(m.cache_dir),
                     param_dtype=m.param_dtype, dtype=m.dtype)


def progress(total: int, desc: str, unit: str):
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0)
