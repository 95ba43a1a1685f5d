"""The command line as users call it: `python -m cai_jax.main --config ... --workdir ...`."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "cai_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


def test_help_lists_the_jobs():
  out = cli("--help")
  assert out.returncode == 0, out.stderr
  for job in ("eval_mc", "generate", "convert"):
    assert job in out.stdout


def test_unknown_job_fails_clearly(tmp_path):
  config = tmp_path / "nope.py"
  config.write_text("from cai_jax import config_defaults\n\n"
                    "def get_config():\n  return config_defaults.base_config('nope')\n")
  out = cli(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2
  assert "unknown job 'nope'" in out.stderr and "eval_mc" in out.stderr


def test_misspelt_override_fails_clearly(tmp_path):
  out = cli("--config=configs/eval_mc.py", "--config.eval.filez=a.jsonl",
            f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "filez" in out.stderr


def test_missing_input_file_names_it(tmp_path):
  missing = tmp_path / "missing.jsonl"
  out = cli("--config=configs/eval_mc.py", f"--config.eval.files={missing}",
            f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2
  assert f"{missing}: cannot open" in out.stderr


def test_config_files_load_from_another_directory(tmp_path):
  out = cli(f"--config={ROOT}/configs/eval_mc.py", f"--workdir={tmp_path}", cwd=str(tmp_path))
  assert out.returncode == 2  # got as far as the job, which wants input files
  assert "no input files" in out.stderr
