"""Deviceless TPU compilation of a hardware config: every program its pipeline runs, compiled
by libtpu for the config's TPU topology on this machine (no TPU needed; `pip install
.[tpu-aot]`), with bytes per device against the chip's HBM, FLOPs and compile times.

python -m cai_jax.main --config configs/compile_check.py --workdir runs/compile \
    --config.compile_check.hardware=configs/hardware/gemma3_27b_tpu_v5p_64.py
Writes WORKDIR/compile_check/report.json; exits with status 2 when a program does not fit.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("compile_check")
  # No persistent compilation cache: a TPU executable compiled without a TPU cannot be loaded
  # back here (JAX warns and compiles again), and compile_s is meant to time the compile.
  config.compilation_cache = ""
  config.compile_check = dict(
      hardware="",     # configs/hardware/<file>.py (a TPU config)
      topology="",     # libtpu's topology name, e.g. 'v5:2x4x4'; '' = from the hardware config
      num_slices=1,    # > 1: that many slices over the data-centre network (data axis x slices)
      stages="",       # comma-separated subset of the config's stages ('' = all)
      overrides="",    # 'section.field=value,...' applied to the hardware config first
      num_layers=0,    # > 0: only the first N blocks (a quick check of the plumbing; the
                       # memory of the config itself needs 0, every layer)
  )
  return config
