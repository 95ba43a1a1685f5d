"""Storage faults on a real small file system (a tmpfs mounted for the test; skipped, saying
why, where this machine does not allow mounting): a disk that fills up while a job appends its
records stops the job with exit status 4 and a message naming the file; after space returns the
same command finishes with the records of an uninterrupted run, each once. A read-only workdir
stops the job before any compute, naming the file it could not write."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mount(path, options: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
  """A 16 KiB tmpfs at tmp_path/disk, unmounted afterwards."""
  disk = tmp_path / "disk"
  if os.geteuid() != 0 or not _mount(disk, "size=16k"):
    pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN, which this machine lacks")
  yield disk
  subprocess.run(["umount", str(disk)], capture_output=True)


def _cli(workdir, settings) -> subprocess.CompletedProcess:
  args = [sys.executable, "-m", "cai_jax.main", "--config", "configs/generate.py",
          "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in settings.items()]
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _lines(path) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return sorted(line for line in f if line.strip())


def test_disk_full_during_appends_then_space_returns(small_disk, tmp_path):
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"), flat_logits=True)
  prompts = tmp_path / "prompts.jsonl"
  with open(prompts, "w") as f:
    for i in range(120):
      f.write(json.dumps({"id": f"p{i:03d}", "prompt": f"\n\nHuman: tell me a story number "
                                                      f"{i} about the sea\n\nAssistant:"}) + "\n")
  settings = {"model.checkpoint": ckpt, "model.cache_dir": str(tmp_path / "cache"),
              "generate.prompts": str(prompts), "generate.max_new_tokens": 24,
              "generate.batch_size": 8, "generate.write_every": 8, "generate.temperature": 1.0}
  whole = _cli(tmp_path / "whole", settings)
  assert whole.returncode == 0, whole.stderr[-3000:]
  expected = _lines(tmp_path / "whole" / "generate" / "completions.jsonl")
  assert sum(len(x) for x in expected) > 16 * 1024  # more than the small disk holds

  out = small_disk / "generate" / "completions.jsonl"
  full = _cli(small_disk, settings)
  assert full.returncode == 4, full.stderr[-3000:]
  assert f"error: {out}: cannot write (No space left on device)" in full.stderr
  written = _lines(out)
  assert 0 < len(written) < len(expected)

  subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
  again = _cli(small_disk, settings)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _lines(out) == expected  # every record once, none cut, the same samples


def test_read_only_workdir_stops_before_compute(small_disk, tmp_path):
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"))
  proc = _cli(small_disk / "run", {"model.checkpoint": ckpt,
                                   "model.cache_dir": str(tmp_path / "cache"),
                                   "generate.prompts": "red_team:test"})
  assert proc.returncode == 4, proc.stderr[-3000:]
  path = small_disk / "run" / "generate" / "config.json"
  assert f"error: {path}: cannot write (Read-only file system)" in proc.stderr
  assert "Traceback" not in proc.stderr
