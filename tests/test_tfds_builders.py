"""TFDS builders: array_record files written and read back with as_data_source, no TensorFlow."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow_datasets",
                    reason="tensorflow-datasets is not installed (pip install -e .)")
pytest.importorskip("array_record", reason="array_record is not installed (pip install -e .)")

from cai_jax.data import sources  # noqa: E402
from cai_jax.data import tfds_builders as tb  # noqa: E402
from cai_jax.data.jsonl import DataError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_data"))


def test_split_rule_is_deterministic():
  # pinned: the rule decides what is held out, so it must never change silently
  keys = [f"k{i}" for i in range(200)]
  assert [k for k in keys if tb.split_for(k) == "test"] == [
      "k3", "k14", "k35", "k42", "k51", "k67", "k83", "k84", "k87", "k97", "k110", "k165",
      "k171", "k174", "k177", "k189", "k198"]
  for k in keys:
    digest = hashlib.sha256(k.encode()).digest()
    assert tb.split_for(k) == ("test" if int.from_bytes(digest[:8], "big") % 10 == 0
                               else "train")
  held_out = [r.id for r in sources.load_prompt_set("red_team") if tb.split_for(r.id) == "test"]
  assert held_out[:5] == ["rt-0023", "rt-0030", "rt-0040", "rt-0062", "rt-0082"]


@pytest.mark.parametrize("name,tfds_name", [("red_team", "cai_red_team_prompts"),
                                            ("helpful", "cai_helpful_prompts")])
def test_prompt_set_builders(data_dir, name, tfds_name):
  builder = tb.prepare(name, data_dir)
  assert builder.name == tfds_name
  assert builder.info.file_format.value == "array_record"
  assert os.path.isdir(builder.data_dir)
  assert any(f.startswith(f"{tfds_name}-train.array_record") for f in os.listdir(builder.data_dir))
  records = sources.load_prompt_set(name)
  sources_ = builder.as_data_source()
  assert set(sources_) == {"train", "test"}
  assert len(sources_["train"]) + len(sources_["test"]) == len(records)
  for split in ("train", "test"):
    expected = [{"id": r.id, "prompt": r.prompt, "category": r.category}
                for r in records if tb.split_for(r.id) == split]
    got = tb.load_split(name, split, data_dir)
    assert len(got) == len(expected) > 0
    assert list(got) == expected  # decoded to str, in file order
    assert got[-1] == expected[-1] and got[1:3] == expected[1:3]
    assert isinstance(got[0]["prompt"], str)
  assert 0.05 <= len(sources_["test"]) / len(records) <= 0.15
  # the same folder reads back without cai_jax's builder classes
  assert list(tb.load_prepared(builder.data_dir, "test")) == list(tb.load_split(name, "test",
                                                                                data_dir))
  with pytest.raises(IndexError):
    tb.load_split(name, "test", data_dir)[len(sources_["test"])]


def test_prepare_twice_reuses_the_files(data_dir):
  first = tb.prepare("red_team", data_dir)
  shard = [f for f in os.listdir(first.data_dir) if "-test.array_record" in f][0]
  mtime = os.path.getmtime(os.path.join(first.data_dir, shard))
  again = tb.prepare("cai_red_team_prompts", data_dir)
  assert again.data_dir == first.data_dir
  assert os.path.getmtime(os.path.join(again.data_dir, shard)) == mtime


def _comparison(i, reply_a="", reply_b=""):
  prompt = f"\n\nHuman: question number {i}?\n\nAssistant:"
  return {"chosen": prompt + (reply_a or f" good answer {i}"),
          "rejected": prompt + (reply_b or f" bad answer {i}")}


def _write(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_hh_builder_from_a_manual_dir(tmp_path):
  manual = str(tmp_path / "manual")
  pooled = [_comparison(i) for i in range(60)]
  pooled.append(_comparison(0, " another good one", " another bad one"))  # same prompt as #0
  _write(os.path.join(manual, "pool.jsonl"), pooled)
  _write(os.path.join(manual, "harmless-base", "train.jsonl.gz"),
         [_comparison(100 + i) for i in range(5)])
  _write(os.path.join(manual, "harmless-base", "test.jsonl"),
         [_comparison(200 + i) for i in range(3)])
  _write(os.path.join(manual, "red-team", "red_team_attempts.jsonl"), [{"transcript": "x"}])
  data_dir = str(tmp_path / "data")

  builder = tb.prepare("hh_comparisons", data_dir, manual_dir=manual)
  assert builder.name == "cai_hh_comparisons"
  train = tb.load_split("hh_comparisons", "train", data_dir, manual_dir=manual)
  test = tb.load_split("hh_comparisons", "test", data_dir, manual_dir=manual)
  assert len(train) + len(test) == len(pooled) + 5 + 3

  expected = {"train": [], "test": []}
  for rel in ["harmless-base/test.jsonl", "harmless-base/train.jsonl.gz", "pool.jsonl"]:
    stem = rel.split(".")[0]
    for c in sources.read_hh_comparisons(os.path.join(manual, rel), id_prefix=stem):
      split = os.path.basename(stem) if os.path.basename(stem) in ("train", "test") else (
          tb.split_for(c.prompt))
      expected[split].append({"id": c.id, "prompt": c.prompt, "chosen": c.chosen,
                              "rejected": c.rejected, "source": rel})
  assert list(train) == expected["train"] and list(test) == expected["test"]
  ids = {r["id"] for r in test}
  assert {"harmless-base/test-000001", "harmless-base/test-000003"} <= ids
  assert "harmless-base/train-000002" in {r["id"] for r in train}
  # comparisons that share a prompt land in the same split
  zero = [r for r in list(train) + list(test) if r["prompt"].startswith("\n\nHuman: question "
                                                                         "number 0?")]
  assert len(zero) == 2 and len({r["id"] in ids for r in zero}) == 1
  assert any(r["source"] == "pool.jsonl" for r in test)  # the pooled file has test rows too

  # a changed input rebuilds the dataset instead of serving stale records
  _write(os.path.join(manual, "harmless-base", "test.jsonl"), [_comparison(300)])
  test2 = tb.load_split("hh_comparisons", "test", data_dir, manual_dir=manual)
  assert "\n\nHuman: question number 300?" in {r["prompt"][:29] for r in test2}
  assert "harmless-base/test-000003" not in {r["id"] for r in test2}


@pytest.mark.skipif(not os.path.exists(os.path.join(
    ROOT, "..", "shared", "reference", "hh-rlhf", "harmless-base-test-first200.jsonl")),
    reason="../shared/reference/hh-rlhf is absent (a fresh clone has no ../shared)")
def test_hh_builder_on_the_real_file(tmp_path):
  src = os.path.join(ROOT, "..", "shared", "reference", "hh-rlhf",
                     "harmless-base-test-first200.jsonl")
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "harmless-base-test-first200.jsonl").write_bytes(open(src, "rb").read())
  builder = tb.prepare("hh_comparisons", str(tmp_path / "data"), manual_dir=str(manual))
  ds = builder.as_data_source()
  assert len(ds["train"]) + len(ds["test"]) == 200 and len(ds["test"]) > 0
  first = tb.DecodedSource(ds["train"])[0]
  c = sources.read_hh_comparisons(src)
  match = next(x for x in c if x.id == first["id"])
  assert (first["prompt"], first["chosen"], first["rejected"]) == (
      match.prompt, match.chosen, match.rejected)


def test_hh_builder_errors(tmp_path):
  with pytest.raises(DataError, match="is not a folder"):
    tb.prepare("hh_comparisons", str(tmp_path / "data"))  # default manual dir is absent
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("nothing here")
  with pytest.raises(DataError, match="no \\*.jsonl"):
    tb.prepare("hh_comparisons", str(tmp_path / "data"), manual_dir=str(empty))
  bad = tmp_path / "bad"
  _write(str(bad / "x.jsonl"), [_comparison(1), {"chosen": "\n\nHuman: a"}])
  with pytest.raises(DataError, match=":2: missing field 'rejected'"):
    tb.prepare("hh_comparisons", str(tmp_path / "data"), manual_dir=str(bad))
  with pytest.raises(ValueError, match="unknown dataset"):
    tb.prepare("red-team", str(tmp_path / "data"))


def test_no_tensorflow_needed(tmp_path):
  """Prepare and read in a fresh interpreter: tensorflow must never be imported."""
  code = (
      "import sys\n"
      "from cai_jax.data import tfds_builders as tb\n"
      f"ds = tb.load_split('helpful', 'test', {str(tmp_path)!r})\n"
      "assert len(ds) > 0 and isinstance(ds[0]['prompt'], str)\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
      "print('ok', len(ds))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ok" in out.stdout
