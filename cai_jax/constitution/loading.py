"""`load_constitution`: a constitution from a name, a file in our format or the paper's prompt
folder. Kept apart from `schema` (our format) and `paper_format` (the paper's files), which it
dispatches to, so that neither of them imports the other."""

from __future__ import annotations

import os
import re

from cai_jax.constitution import paper_format
from cai_jax.constitution.schema import (CONSTITUTIONS_DIR, DEFAULT, Constitution,
                                         ConstitutionError, load_file)


def available_constitutions() -> list[str]:
  """Names of the constitutions in `constitutions/`."""
  if not os.path.isdir(CONSTITUTIONS_DIR):
    return []
  return sorted(os.path.splitext(f)[0] for f in os.listdir(CONSTITUTIONS_DIR)
                if f.endswith(".json"))


def _is_bare_name(spec: str) -> bool:
  return re.fullmatch(r"[A-Za-z0-9_\-]+", spec) is not None


def load_constitution(spec: str) -> Constitution:
  """A constitution from a name, a file in our format, or the paper's prompt folder.

  - an existing folder: the paper's five prompt files (`paper_format.load_paper_folder`);
  - an existing file: our format (`.json`, or `.yaml`/`.yml` with PyYAML);
  - a bare name such as `"harmless"` or `"caveats"`: `constitutions/<name>.json` at the
    repository root (`CONSTITUTIONS_DIR`). An install without the repository's folder (not
    `pip install -e`) has no named constitutions: give a path instead.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ConstitutionError(f"{spec!r}: empty constitution (give a name such as {DEFAULT!r}, "
                            "a .json file or the paper's prompt folder)")
  path = os.path.expanduser(spec)
  if os.path.isdir(path):
    return paper_format.load_paper_folder(path, helpful_from=load_constitution(DEFAULT))
  if os.path.isfile(path):
    return load_file(path)
  if _is_bare_name(spec):
    candidate = os.path.join(CONSTITUTIONS_DIR, spec + ".json")
    if os.path.isfile(candidate):
      return load_file(candidate)
    have = ", ".join(available_constitutions()) or "none"
    raise ConstitutionError(f"{candidate}: no constitution named {spec!r} "
                            f"(available in {CONSTITUTIONS_DIR}: {have})")
  raise ConstitutionError(f"{spec}: no such file or folder")
