"""TFDS builders (array_record, no TensorFlow) for our prompt sets and HH-RLHF comparisons.

Datasets (TFDS name; short name accepted by `prepare` / `load_split`):
- `cai_red_team_prompts` ('red_team'), `cai_helpful_prompts` ('helpful'): the prompt sets shipped
  in `cai_jax/data/prompts/`. Features: `id`, `prompt`, `category` (all `tfds.features.Text`).
- `cai_hh_comparisons` ('hh_comparisons'): HH-RLHF comparison files found (recursively) in the
  manual dir: `*.jsonl` / `*.jsonl.gz`, `{"chosen", "rejected"}` per line, files named
  `red_team_attempts*` skipped (another format). Features: `id`, `prompt`, `chosen`,
  `rejected`, `source` (the file's path relative to the manual dir). Ids are
  `"<relative path without .jsonl/.gz>-<line:06d>"`.

Splits. Deterministic, from content, never from a random seed: a record goes to `test` when the
first 8 bytes of sha256(key), read as a big-endian integer, are 0 mod 10 (`split_for`), else to
`train`. The key is the id for our prompt sets, and the prompt for HH comparisons, so that
comparisons sharing a conversation never straddle the two splits. An HH file named `train.*` or
`test.*` (as in the HH-RLHF release) keeps its own split instead. A split with no records is left
out (TFDS cannot write an empty split). Within a split, records keep file order
(`disable_shuffling`).

How it runs without TensorFlow: the builders are ordinary `tfds.core.GeneratorBasedBuilder`s
prepared with `file_format="array_record"`; TFDS writes array_record shards with its own
TensorFlow-free example serializer, and `as_data_source()` reads them back by random access
(`ArrayRecordDataSource`). `tensorflow` is never imported (checked by the tests). Text features
come back as bytes; `load_split` decodes them to `str`.

Re-preparing. Each prepared dataset records a fingerprint of its input (the prompt records, or
the HH files' bytes) in its metadata; `prepare` rebuilds the dataset when the input changed, so
an edited prompt set or a different manual dir never serves stale records. Only local files are
read: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from cai_jax.data import sources
from cai_jax.data.jsonl import DataError

TEST_BUCKETS = sources.TEST_BUCKETS
split_for = sources.split_for  # one split rule for the TFDS builders and load_prompt_set
_HH_SUFFIXES = (".jsonl.gz", ".jsonl")


def _sha256_json(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# our prompt sets


class _PromptSetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A prompt set of `cai_jax.data.sources.load_prompt_set`, split by a hash of the id."""

  PROMPT_SET = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  @classmethod
  def source_fingerprint(cls, manual_dir: str | None = None) -> str:
    del manual_dir  # package data only
    return _sha256_json([[r.id, r.category, r.prompt] for r in sources.load_prompt_set(
        cls.PROMPT_SET)])

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"cai_jax's own '{self.PROMPT_SET}' prompt set (HH format, one "
                     "category per prompt)."),
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "category": tfds.features.Text(),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(fingerprint=self.source_fingerprint()),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    records = sources.load_prompt_set(self.PROMPT_SET)
    splits = {"train": [], "test": []}
    for r in records:
      splits[split_for(r.id)].append(r)
    return {name: self._generate_examples(rows) for name, rows in splits.items() if rows}

  def _generate_examples(self, rows):
    for r in rows:
      yield r.id, {"id": r.id, "prompt": r.prompt, "category": r.category or ""}


class CaiRedTeamPrompts(_PromptSetBuilder):
  """cai_jax's red-team prompts: 210 harmful requests over 14 tagged harm categories."""
  PROMPT_SET = "red_team"


class CaiHelpfulPrompts(_PromptSetBuilder):
  """cai_jax's helpfulness prompts: 210 ordinary requests over 14 categories."""
  PROMPT_SET = "helpful"


# ---------------------------------------------------------------------------------------------
# HH-RLHF comparisons from a local folder


def _hh_files(root: str) -> list[str]:
  """Comparison files under `root`, as sorted paths relative to it."""
  if not os.path.isdir(root):
    raise DataError(f"{root}: the manual dir for cai_hh_comparisons is not a folder")
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if (name.endswith(_HH_SUFFIXES) and not name.startswith(".")
          and not name.startswith("red_team_attempts")):
        found.append(os.path.relpath(os.path.join(folder, name), root))
  if not found:
    raise DataError(f"{root}: no *.jsonl or *.jsonl.gz comparison files in the manual dir")
  return sorted(found)


def _strip_suffix(rel: str) -> str:
  for suffix in _HH_SUFFIXES:
    if rel.endswith(suffix):
      return rel[:-len(suffix)]
  return rel


class CaiHhComparisons(tfds.core.GeneratorBasedBuilder):
  """HH-RLHF comparisons (chosen / rejected) read from local files in the manual dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put HH-RLHF comparison files in the manual dir (`DownloadConfig(manual_dir=...)`, or
  `prepare("hh_comparisons", data_dir, manual_dir=...)`): *.jsonl or *.jsonl.gz with one
  {"chosen": transcript, "rejected": transcript} per line, in any sub-folders (e.g. the
  hh-rlhf release's harmless-base/ and helpful-base/). Files named train.* / test.* keep their
  split; every other file is split by a hash of the prompt. Nothing is downloaded."""

  @classmethod
  def source_fingerprint(cls, manual_dir: str | None) -> str:
    if manual_dir is None:
      raise ValueError("cai_hh_comparisons needs manual_dir: a folder of HH-RLHF jsonl files")
    manual_dir = os.fspath(manual_dir)
    h = hashlib.sha256()
    for rel in _hh_files(manual_dir):
      h.update(rel.encode() + b"\0")
      with open(os.path.join(manual_dir, rel), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      h.update(b"\0")
    return h.hexdigest()

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Human preference comparisons in the HH-RLHF format: the shared prompt "
                     "(up to and including the last '\\n\\nAssistant:') and the chosen and "
                     "rejected final replies."),
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "chosen": tfds.features.Text(),
            "rejected": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    self.info.metadata["fingerprint"] = self.source_fingerprint(root)
    splits = {"train": [], "test": []}
    prefixes: dict[str, str] = {}
    for rel in _hh_files(root):
      prefix = _strip_suffix(rel).replace(os.sep, "/")
      if prefix in prefixes:
        raise DataError(f"{os.path.join(root, rel)}: same name as {prefixes[prefix]} once "
                        ".jsonl/.gz is dropped; keep one of the two")
      prefixes[prefix] = rel
      stem = os.path.basename(prefix)
      for c in sources.read_hh_comparisons(os.path.join(root, rel), id_prefix=prefix):
        split = stem if stem in ("train", "test") else split_for(c.prompt)
        splits[split].append((c, rel.replace(os.sep, "/")))
    return {name: self._generate_examples(rows) for name, rows in splits.items() if rows}

  def _generate_examples(self, rows):
    for c, rel in rows:
      yield c.id, {"id": c.id, "prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected,
                   "source": rel}


# ---------------------------------------------------------------------------------------------
# preparing and reading


BUILDERS = {
    "red_team": CaiRedTeamPrompts,
    "helpful": CaiHelpfulPrompts,
    "hh_comparisons": CaiHhComparisons,
}


def builder_class(name: str):
  """The builder class for a short name ('red_team', 'helpful', 'hh_comparisons') or a TFDS
  name ('cai_red_team_prompts', 'cai_helpful_prompts', 'cai_hh_comparisons')."""
  if name in BUILDERS:
    return BUILDERS[name]
  for cls in BUILDERS.values():
    if cls.name == name:
      return cls
  known = ", ".join(list(BUILDERS) + [c.name for c in BUILDERS.values()])
  raise ValueError(f"unknown dataset {name!r}; known: {known}")


def prepare(name: str, data_dir: str, *, manual_dir: str | None = None):
  """Writes the dataset (array_record) under `data_dir` unless it is there already, built from
  the same input; returns the prepared builder. `manual_dir` (HH comparisons only) is the folder
  of HH-RLHF files; it defaults to TFDS's `<data_dir>/downloads/manual`."""
  cls = builder_class(name)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if cls is CaiHhComparisons and manual_dir is None:
    manual_dir = os.path.join(data_dir, "downloads", "manual")
  if manual_dir is not None:
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
  want = cls.source_fingerprint(manual_dir)
  builder = cls(data_dir=data_dir, file_format="array_record")
  if builder.is_prepared() and (builder.info.metadata or {}).get("fingerprint") != want:
    shutil.rmtree(builder.data_dir)  # the input changed: rebuild from scratch
    builder = cls(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  return value


class DecodedSource(Sequence):
  """A TFDS data source (random access) whose Text features come back as Python `str`."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    return _decode(self.source[index])

  def __repr__(self) -> str:
    return f"DecodedSource({self.source!r})"


def load_split(name: str, split: str, data_dir: str, *,
               manual_dir: str | None = None) -> DecodedSource:
  """Records of one split as dicts of `str` (random access); prepares the dataset first when
  needed. `split` is anything TFDS accepts ('train', 'test', 'train[:10]', ...)."""
  builder = prepare(name, data_dir, manual_dir=manual_dir)
  return DecodedSource(builder.as_data_source(split=split))


def load_prepared(directory: str, split: str) -> DecodedSource:
  """A split of an already prepared dataset folder (`<data_dir>/<name>/<version>`), read with
  `tfds.builder_from_directory`: needs neither cai_jax's builders nor the original input."""
  builder = tfds.builder_from_directory(os.fspath(directory))
  return DecodedSource(builder.as_data_source(split=split))
