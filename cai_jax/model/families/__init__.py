"""The registry of model families: a checkpoint's config or GGUF metadata -> its `Family`.

Adding a family: write `families/<name>.py` defining `FAMILY = base.Family(...)` (see
`base.py`; `qwen3.py` is a short example) and add its module to `_MODULES` below.
"""

from __future__ import annotations

from typing import Any, Mapping

from cai_jax.model.config import DecoderConfig
from cai_jax.model.families import base, gemma2, gemma3, llama, mistral, qwen2, qwen3
from cai_jax.model.families.base import CheckpointError, Family

_MODULES = (gemma3, gemma2, llama, mistral, qwen2, qwen3)
FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}

PRESETS: dict[str, DecoderConfig] = {}
for _family in FAMILIES.values():
  for _name, _cfg in _family.presets.items():
    assert _name not in PRESETS, _name
    PRESETS[_name] = _cfg


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise CheckpointError(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}")
  return FAMILIES[name]


def preset(name: str, **overrides) -> DecoderConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def supported_hf_model_types() -> list[str]:
  return [t for f in FAMILIES.values() for t in f.hf_model_types]


def for_hf_config(d: Mapping[str, Any], where: str) -> Family:
  """The family that reads a config.json dict (by its `model_type`)."""
  model_type = d.get("model_type")
  for family in FAMILIES.values():
    if model_type in family.hf_model_types:
      return family
  raise CheckpointError(
      f"{where}: model_type {model_type!r} (architectures {d.get('architectures')}) is not "
      f"supported; cai_jax reads {', '.join(supported_hf_model_types())}")


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  return for_hf_config(d, where).config_from_hf(d, where)


def for_gguf_architecture(arch: str, where: str) -> Family:
  for family in FAMILIES.values():
    if arch in family.gguf_architectures:
      return family
  known = [a for f in FAMILIES.values() for a in f.gguf_architectures]
  raise CheckpointError(f"{where}: general.architecture is {arch!r}; cai_jax reads GGUF "
                        f"architectures {', '.join(known)}")


def config_from_dict(d: Mapping[str, Any]) -> DecoderConfig:
  """`DecoderConfig.from_dict`, also for dicts saved before configs named their family: those
  were all of the gemma3 family, whose RoPE scaling was implied by a scale other than 1."""
  d = dict(d)
  if "family" not in d:
    fixed = dict(gemma3.FIXED)
    if float(d.get("global_rope_scale", 1.0)) != 1.0:
      fixed["rope_scaling"] = "linear"
    d = {**fixed, **d}
  return DecoderConfig.from_dict(d)


__all__ = ["CheckpointError", "FAMILIES", "Family", "PRESETS", "base", "config_from_dict",
           "config_from_hf", "for_gguf_architecture", "for_hf_config", "get", "preset"]
