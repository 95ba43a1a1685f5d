"""Export a checkpoint as an HF folder and/or a cai_jax orbax checkpoint.

python -m cai_jax.main --config configs/convert.py --workdir runs/export \
    --config.model.checkpoint=gemma3-270m --config.convert.formats=hf,orbax
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("convert")
  config.convert = dict(
      formats="hf,orbax",  # written to WORKDIR/convert/hf and WORKDIR/convert/orbax
  )
  return config
