"""SL data: the HH conversation format and its masks, the truncation policy, batches (targets,
weights, buckets), deterministic shuffling with a resumable position, and file errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cai_jax.data import conversation, sl
from cai_jax.data.jsonl import DataError
import tiny_model


@pytest.fixture(scope="module")
def tok():
  return tiny_model.small_tokenizer()


def test_parse_and_format_roundtrip():
  text = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant:"
  turns = conversation.parse(text)
  assert turns == [("Human", " hi there"), ("Assistant", " hello!"), ("Human", " bye"),
                   ("Assistant", "")]
  assert conversation.format_turns(turns) == text
  with pytest.raises(ValueError, match="must start"):
    conversation.parse("Human: no leading newlines")
  with pytest.raises(ValueError, match="alternate"):
    conversation.parse("\n\nHuman: a\n\nHuman: b")


def test_conversation_mask_covers_assistant_words_only(tok):
  text = "\n\nHuman: hi\n\nAssistant: yes ok\n\nHuman: why\n\nAssistant: because"
  ids, mask = conversation.tokenize_conversation(tok, text, append_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == len(mask)
  masked_text = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=True)
  assert masked_text == " yes ok because"
  unmasked = tok.decode([i for i, m in zip(ids, mask) if not m], skip_special=True)
  assert unmasked == "\n\nHuman: hi\n\nAssistant:\n\nHuman: why\n\nAssistant:"


def test_prompt_completion_tokens_and_mask(tok):
  ids, mask = conversation.tokenize_prompt_completion(tok, "\n\nHuman: q\n\nAssistant:", " an answer")
  assert ids == ([tok.bos_id] + tok.encode("\n\nHuman: q\n\nAssistant:", add_bos=False)
                 + tok.encode(" an answer", add_bos=False) + [tok.eos_id])
  assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=True) == " an answer"
  assert mask[-1] and not mask[0]


def test_truncation_policy():
  ids = [2, 10, 11, 12, 13, 14, 20, 21, 1]   # BOS, 5 prompt tokens, 3 completion tokens
  mask = [False] * 6 + [True] * 3
  assert sl.fit_length(ids, mask, 9) == (ids, mask, False)
  out, m, cut = sl.fit_length(ids, mask, 6)   # keep BOS + newest 2 prompt tokens
  assert (out, m, cut) == ([2, 13, 14, 20, 21, 1], [False] * 3 + [True] * 3, True)
  out, m, cut = sl.fit_length(ids, mask, 4)   # room for BOS only, then completion fits
  assert (out, m, cut) == ([2, 20, 21, 1], [False] + [True] * 3, True)
  out, m, cut = sl.fit_length(ids, mask, 3)   # completion alone too long: keep its head
  assert (out, m, cut) == ([2, 20, 21], [False, True, True], True)


def test_make_batch_shifts_targets_and_weights():
  ex = sl.Example(np.array([2, 5, 6, 7], np.int32), np.array([False, False, True, True]))
  b = sl.make_batch([ex, None], 8)
  np.testing.assert_array_equal(b["tokens"][0], [2, 5, 6, 7, 0, 0, 0, 0])
  np.testing.assert_array_equal(b["targets"][0], [5, 6, 7, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(b["weights"][0], [0, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(b["valid"][0], [1, 1, 1, 1, 0, 0, 0, 0])
  assert not b["valid"][1].any() and not b["weights"][1].any()


def examples(n):
  rng = np.random.default_rng(1)
  return [sl.Example(np.arange(k, dtype=np.int32) + 3 + i, np.arange(k) > 0)
          for i, k in enumerate(rng.integers(2, 100, n))]


def test_batches_are_deterministic_full_bucketed_and_resumable():
  exs = examples(10)
  it = sl.BatchIterator(exs, 4, seed=3, max_length=96, min_length=16)
  seen, lengths = [], set()
  for _ in range(5):  # 20 rows = 2 epochs
    batch, pos = next(it)
    assert batch["tokens"].shape[0] == 4
    lengths.add(batch["tokens"].shape[1])
    seen.append(batch["tokens"][:, 0].tolist())
  assert lengths <= {16, 32, 64, 96}
  first_epoch = sum(seen, [])[:10]
  assert sorted(first_epoch) == sorted(int(e.ids[0]) for e in exs)  # each example once per epoch
  assert pos == {"epoch": 2, "index": 0}
  again = sl.BatchIterator(exs, 4, seed=3, max_length=96, min_length=16)
  assert [next(again)[0]["tokens"][:, 0].tolist() for _ in range(5)] == seen
  resumed = sl.BatchIterator(exs, 4, seed=3, max_length=96, min_length=16)
  resumed.restore({"epoch": 0, "index": 8})  # after two batches
  assert [next(resumed)[0]["tokens"][:, 0].tolist() for _ in range(3)] == seen[2:]
  other_seed = sl.BatchIterator(exs, 4, seed=4, max_length=96, min_length=16)
  assert [next(other_seed)[0]["tokens"][:, 0].tolist() for _ in range(5)] != seen
  halves = [sl.BatchIterator(exs, 4, seed=3, max_length=96, rows=r) for r in
            (slice(0, 2), slice(2, 4))]
  b0, b1 = next(halves[0])[0], next(halves[1])[0]
  np.testing.assert_array_equal(np.concatenate([b0["tokens"], b1["tokens"]]),
                                sl.BatchIterator(exs, 4, seed=3, max_length=96).__next__()[0]["tokens"])


def test_eval_batches_cover_each_example_once():
  exs = examples(7)
  batches = list(sl.eval_batches(exs, 4, max_length=128))
  assert len(batches) == 2
  assert sum(int(b["valid"].any(axis=1).sum()) for b in batches) == 7


def write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def test_read_sl_file_errors_name_file_and_line(tmp_path, tok):
  good = json.dumps({"prompt": "\n\nHuman: a\n\nAssistant:", "completion": " b", "source": "x"})
  p = write(tmp_path / "ok.jsonl", [good, "", good])
  assert len(sl.read_sl_file(p, tok, max_length=64)) == 2
  cases = {
      "bad_json.jsonl": ([good, "{nope"], ":2: not valid JSON"),
      "missing.jsonl": ([json.dumps({"prompt": "x"})], ":1: missing field 'completion'"),
      "type.jsonl": ([good, json.dumps({"prompt": 3, "completion": "y"})],
                     ":2: field 'prompt' should be str"),
      "empty_completion.jsonl": ([json.dumps({"prompt": "x", "completion": "  "})],
                                 ":1: empty completion"),
      "hh.jsonl": ([json.dumps({"prompt": "\n\nHuman: a\n\nHuman: b", "completion": "c"})],
                   ":1: prompt: turn 2"),
  }
  for name, (lines, message) in cases.items():
    path = write(tmp_path / name, lines)
    with pytest.raises(DataError, match=f"{name}{message}"):
      sl.read_sl_file(path, tok, max_length=64)
  with pytest.raises(DataError, match="empty.jsonl: no examples"):
    sl.read_sl_file(write(tmp_path / "empty.jsonl", ["", " "]), tok, max_length=64)


def test_long_examples_are_truncated_and_counted(tmp_path, tok):
  long = json.dumps({"prompt": "\n\nHuman: " + "word " * 50 + "\n\nAssistant:",
                     "completion": " short"})
  out = sl.read_sl_file(write(tmp_path / "long.jsonl", [long]), tok, max_length=32)
  assert out[0].truncated and len(out[0].ids) == 32 and out[0].ids[0] == tok.bos_id
  assert tok.decode(out[0].ids[out[0].mask].tolist(), skip_special=True) == " short"
