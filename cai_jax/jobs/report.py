"""Job `report`: WORKDIR/report/report.md and its PNG figures from the workdir's stage outputs
(see `cai_jax.eval.report`). Runs on any workdir, including one whose pipeline is unfinished:
missing stages are reported as not run."""

from __future__ import annotations

import os

from cai_jax.config_defaults import ConfigError
from cai_jax.eval import report


def run(config, workdir: str) -> dict:
  r = config.report
  if r.examples < 0:
    raise ConfigError(f"report.examples must be >= 0, got {r.examples}")
  result = report.build(workdir, r.output or os.path.join(workdir, "report"),
                        examples=r.examples, title=r.title)
  print(f"wrote {result['markdown']} ({len(result['figures'])} figures: "
        f"{', '.join(sorted(result['figures']))})", flush=True)
  return result
