"""Loads configs/<job>.py the way the CLI does, with dotted-key overrides, for in-process tests."""

from __future__ import annotations

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def load_config(name: str, **overrides):
  spec = importlib.util.spec_from_file_location(f"configs_{name}",
                                                os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
