"""Tokenizer tests against the Gemma 3 270M GGUF vocabulary.

What each comparison is against:

* Main equality set (`_main_strings`: 1,956 seeded strings: unicode of many scripts, emoji,
  combining accents, RTL, runs of spaces/tabs/newlines, code, numbers, HH-style dialogue,
  special-token text, leading/trailing whitespace, the empty string). Reference: transformers'
  GemmaTokenizer built from the same GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`,
  `add_special_tokens=False`); our `encode(s, add_bos=False)` must equal it id for id. Without
  transformers, `tests/golden/tokenizer_ids.json` (ids that transformers produced, written by
  `tests/golden/make_tokenizer_golden.py`) is the reference instead; it is checked either way.

* Runs of 32 or more spaces are kept out of the main set, because transformers' GGUF tokenizer
  segments them differently from SentencePiece. The GGUF has the whitespace runs of 2..31 spaces
  as USER_DEFINED pieces (ids 138..167). SentencePiece matches user-defined pieces greedily,
  longest first, before any BPE merge, so n spaces become floor(n/31) pieces of 31 spaces and
  then the remainder r = n mod 31: a run piece (r >= 2), "▁" which BPE may merge with a
  following word (r == 1, e.g. "▁two"), or nothing (r == 0). transformers' converter leaves
  those pieces to its BPE merges instead, which (measured with transformers 5.24, n = 32..129)
  give n // 16 - 1 pieces of 16 spaces and then one of 16 + n mod 16 spaces (40 spaces: ours
  [167, 145] = 31 + 9, transformers [152, 160] = 16 + 24; 32 spaces + "two": ours [167, 1156],
  transformers [152, 152, 13498]); for n <= 31 both give the single run piece. For n >= 32 we
  therefore compare against that greedy rule, written out from the vocabulary's own pieces
  (`piece_to_id("▁" * k)`) plus our encoding of the < 32-space tail, which the main set checks
  against transformers; both segmentations must still decode to the same text. transformers
  shows the same 16-space pattern when it reads our exported tokenizer.model, and agrees with
  its GGUF tokenizer on the whole main set (`test_saved_model_reads_the_same_in_transformers`).

* decode(encode(s)) == s on every generated string (none contains U+2581, which SentencePiece
  reads as a space by design), BOS handling, the <unk> piece type, and save()/from_file()
  round trips.
"""

from __future__ import annotations

import json
import os
import random
import re

import pytest

from cai_jax.tokenizer import Tokenizer
from fake_gguf import FakeReader

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "tokenizer_ids.json")
WS = "\u2581"
RUN_PIECE_MAX = 31  # longest whitespace-run piece in Gemma 3's vocabulary
SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<end_of_image>", "<unused0>", "<unused17>", "<unused6241>",
            "[multimodal]", "<table>", "</td>", "<h1>", "<code>", "</code>"]
_LONG_SPACES = re.compile(" {32,}")


# ----------------------------------------------------------------------------- strings
_WORDS = ("the a of and to in is you that it he was for on are as with his they I at be this "
          "have from or one had by word but not what all were we when your can said there use an "
          "each which she do how their if will up other about out many then them these so some "
          "her would make like him into time has look two more write go see number no way could "
          "people my than first water been call who oil its now find long down day did get come "
          "made may part Hello World Python JAX Gemma Constitutional AI harmless helpful honest "
          "I'm don't can't it's O'Neil e-mail state-of-the-art U.S.A. naïve café résumé").split()
_SCRIPTS = {
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)],
    "cyrillic": [(0x0410, 0x044F)],
    "greek": [(0x0391, 0x03C9)],
    "arabic": [(0x0621, 0x064A)],
    "hebrew": [(0x05D0, 0x05EA)],
    "devanagari": [(0x0905, 0x0939)],
    "thai": [(0x0E01, 0x0E30)],
    "latin_ext": [(0x00C0, 0x017F)],
    "emoji": [(0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF)],
    "symbols": [(0x2190, 0x21FF), (0x2200, 0x22FF), (0x2500, 0x257F), (0x20A0, 0x20BF)],
    "math_alnum": [(0x1D400, 0x1D7FF)],
    "rare": [(0x10000, 0x1007F), (0x13000, 0x1342F), (0x20000, 0x2A6DF), (0xE000, 0xE0FF)],
}
_EXTRAS = ["\u200d", "\u200b", "\u00a0", "\u3000", "\u0301", "\u0308", "\ufe0f", "\u202e",
           "\u2028", "\r", "\x00", "\x07", "\x1b", "\x7f", "\ufeff", "\U0001F1FA\U0001F1F8",
           "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F44D\U0001F3FD", "e\u0301",
           "\ufb01", "\u2126", "\uff21\uff22", "\u00bd", "\u2460", "x\u00b2"]
_CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "if __name__ == \"__main__\":\n        main()\n",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<div class=\"x\"><span>hi</span></div>",
    "x = [i**2 for i in range(10) if i % 2]  # squares\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }\n",
    "    \tmixed  \t indentation\n",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "const f = async (a, b) => { await g(a ?? b); };",
]


def _rand_script_text(rng: random.Random) -> str:
  ranges = _SCRIPTS[rng.choice(sorted(_SCRIPTS))]
  out = []
  for _ in range(rng.randint(1, 12)):
    lo, hi = rng.choice(ranges)
    out.append(chr(rng.randint(lo, hi)))
    if rng.random() < 0.2:
      out.append(" ")
  return "".join(out)


def _rand_number(rng: random.Random) -> str:
  kind = rng.randrange(6)
  if kind == 0:
    return str(rng.randint(0, 10**rng.randint(1, 20)))
  if kind == 1:
    return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}"
  if kind == 2:
    return f"{rng.randint(1, 10**9):,}"
  if kind == 3:
    return f"{rng.uniform(0, 1):.3e}"
  if kind == 4:
    return f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(1900, 2100)}"
  return f"+1 ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"


def _rand_ws(rng: random.Random) -> str:
  ch = rng.choice([" ", " ", "\t", "\n", "\r\n", " \t", "\n ", "\u3000", "\u00a0"])
  return ch * rng.randint(1, 40)


def _rand_fragment(rng: random.Random) -> str:
  kind = rng.randrange(9)
  if kind <= 2:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 10)))
  if kind == 3:
    return _rand_script_text(rng)
  if kind == 4:
    return _rand_number(rng)
  if kind == 5:
    return _rand_ws(rng)
  if kind == 6:
    return rng.choice(SPECIALS)
  if kind == 7:
    return rng.choice(_EXTRAS)
  return rng.choice(_CODE)


def _dialogue(rng: random.Random) -> str:
  turns = []
  for _ in range(rng.randint(1, 3)):
    turns.append("\n\nHuman: " + " ".join(_rand_fragment(rng) for _ in range(rng.randint(1, 3))))
    reply = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 25)))
    turns.append("\n\nAssistant: " + reply)
  return "".join(turns)


def _chat(rng: random.Random) -> str:
  user = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
  model = _rand_fragment(rng)
  end = rng.choice(["<end_of_turn>", "<end_of_turn>\n", "<eos>", ""])
  return f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{model}{end}"


def generate_strings(n: int = 2000, seed: int = 20240607) -> list[str]:
  """n deterministic test strings; a fixed head of hand-picked edge cases, then random mixes."""
  rng = random.Random(seed)
  head = ["", " ", "  ", "\t", "\n", "\n\n", " x", "x ", "  x  ", "Hello world", "<bos>",
          "<start_of_turn>", "<start_of_turn>user\nHi<end_of_turn>", "<<bos>>", "<bos<eos>>",
          "<start_of_turn", "start_of_turn>", "<unused99999>", "a<unk>b", "<pad><pad>",
          "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "1234567890", "3.14159", "-0.5e-10"]
  head += [" " * k for k in range(1, RUN_PIECE_MAX + 1)]
  head += [" " * k + "two" for k in range(1, RUN_PIECE_MAX + 1)]
  head += [" " * k + "b" for k in range(1, RUN_PIECE_MAX + 1)]
  head += ["a" + " " * k + "b" for k in range(1, RUN_PIECE_MAX + 1)]
  head += ["a" + "\t" * k + "b" for k in range(1, 41)]
  head += ["a" + "\n" * k + "b" for k in range(1, 41)]
  out = list(head)
  while len(out) < n:
    r = rng.random()
    if r < 0.15:
      s = _dialogue(rng)
    elif r < 0.25:
      s = _chat(rng)
    else:
      seps = ["", " ", "\n", "  ", "\t"]
      s = "".join(_rand_fragment(rng) + rng.choice(seps) for _ in range(rng.randint(1, 6)))
    if rng.random() < 0.15:
      s = " " * rng.randint(1, 4) + s
    if rng.random() < 0.15:
      s = s + " " * rng.randint(1, 4)
    out.append(s)
  assert not any(WS in s for s in out)  # U+2581 reads back as a space; see module docstring
  return out


def _main_strings() -> list[str]:
  return [s for s in generate_strings() if not _LONG_SPACES.search(s)]


def _long_space_strings() -> list[str]:
  out = [" " * n for n in range(32, 130)]
  out += ["a" + " " * n + "b" for n in range(32, 100)]
  out += [" " * n + "two" for n in range(32, 100)]
  out += ["x" + " " * n for n in (32, 33, 62, 63, 64, 93, 94, 95, 500)]
  out += [s for s in generate_strings() if _LONG_SPACES.search(s)]
  return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok(gemma270m) -> Tokenizer:
  # Built from the GGUF's vocabulary by the checkpoint conversion, saved as tokenizer.model in
  # the conversion cache and read back: the path every job takes.
  return gemma270m.tokenizer


@pytest.fixture(scope="module")
def hf_tok(hf_gguf_tokenizer):
  return hf_gguf_tokenizer


def _hf_ids(hf_tok, texts: list[str]) -> list[list[int]]:
  return hf_tok(texts, add_special_tokens=False)["input_ids"]


def _first_mismatches(texts, got, want, k=5) -> str:
  bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
  return f"{len(bad)}/{len(texts)} differ; first: " + "; ".join(
      f"{t!r}: ours {g} ref {w}" for t, g, w in bad[:k])


# ----------------------------------------------------------------------------- reference ids
def test_matches_transformers(tok, hf_tok):
  texts = _main_strings()
  assert len(texts) >= 1000
  got = tok.encode_batch(texts, add_bos=False)
  want = _hf_ids(hf_tok, texts)
  assert got == want, _first_mismatches(texts, got, want)


def test_matches_golden_ids(tok):
  with open(GOLDEN, encoding="utf-8") as f:
    golden = json.load(f)
  texts = [g["text"] for g in golden["cases"]]
  assert len(texts) >= 200
  got = tok.encode_batch(texts, add_bos=False)
  want = [g["ids"] for g in golden["cases"]]
  assert got == want, _first_mismatches(texts, got, want)


def _greedy_space_ids(tok: Tokenizer, n: int, rest: str) -> list[int]:
  """SentencePiece's segmentation of n spaces then `rest`: longest run pieces first."""
  longest = tok.piece_to_id(WS * RUN_PIECE_MAX)
  return [longest] * (n // RUN_PIECE_MAX) + tok.encode(" " * (n % RUN_PIECE_MAX) + rest,
                                                       add_bos=False)


def test_long_space_runs_follow_sentencepiece(tok):
  ws_pieces = {k: tok.piece_to_id(WS * k) for k in range(1, RUN_PIECE_MAX + 1)}
  assert len(set(ws_pieces.values())) == RUN_PIECE_MAX and tok.unk_id not in ws_pieces.values()
  assert tok.piece_to_id(WS * (RUN_PIECE_MAX + 1)) == tok.unk_id  # no longer run piece exists
  for n in range(32, 130):
    assert tok.encode(" " * n, add_bos=False) == _greedy_space_ids(tok, n, "")
    assert tok.encode(" " * n + "two", add_bos=False) == _greedy_space_ids(tok, n, "two")
    prefix = tok.encode("a", add_bos=False)
    assert tok.encode("a" + " " * n + "b", add_bos=False) == prefix + _greedy_space_ids(tok, n, "b")
  assert tok.encode(" " * 40, add_bos=False) == [ws_pieces[31], ws_pieces[9]]
  assert tok.encode(" " * 32 + "two", add_bos=False) == [ws_pieces[31], tok.piece_to_id(WS + "two")]


def test_long_space_runs_vs_transformers(tok, hf_tok):
  """transformers segments 32+ spaces differently (module docstring): same text, other pieces."""
  texts = _long_space_strings()
  got = tok.encode_batch(texts, add_bos=False)
  want = _hf_ids(hf_tok, texts)
  for t, g, w in zip(texts, got, want):
    assert tok.decode(g) == tok.decode(w) == t
  # On pure runs both sides use only the vocabulary's whitespace pieces ("▁" * 1..31).
  space_ids = {tok.piece_to_id(WS * k) for k in range(1, RUN_PIECE_MAX + 1)}
  for t, g, w in zip(texts, got, want):
    if not t.strip(" "):
      assert set(g) <= space_ids and set(w) <= space_ids, t


# ----------------------------------------------------------------------------- behaviour
def test_decode_round_trips(tok):
  texts = generate_strings() + _long_space_strings()
  for t, ids in zip(texts, tok.encode_batch(texts, add_bos=False)):
    assert tok.decode(ids) == t


def test_bos_is_explicit(tok):
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (2, 1, 0, 3)
  assert tok.vocab_size == 262144
  plain = tok.encode("Hello world", add_bos=False)
  assert plain and plain[0] != tok.bos_id
  assert tok.encode("Hello world", add_bos=True) == [tok.bos_id] + plain
  assert tok.encode("", add_bos=True) == [tok.bos_id]
  assert tok.encode("", add_bos=False) == []
  with pytest.raises(TypeError):
    tok.encode_batch("abc", add_bos=False)
  assert tok.encode_batch(["a", "", "b c"], add_bos=True) == [
      [tok.bos_id] + tok.encode(s, add_bos=False) for s in ["a", "", "b c"]]
  # Text "<bos>" is the BOS token too, so a caller that writes it gets exactly one.
  assert tok.encode("<bos>Hello world", add_bos=False) == tok.encode("Hello world", add_bos=True)


def test_special_tokens(tok):
  from sentencepiece import sentencepiece_model_pb2 as pb2

  Piece = pb2.ModelProto.SentencePiece
  assert tok.id_to_piece(tok.unk_id) == "<unk>"
  assert tok.piece_type(tok.unk_id) == Piece.UNKNOWN
  assert tok.piece_type(tok.bos_id) == Piece.CONTROL
  for name in ["<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<table>"]:
    i = tok.piece_to_id(name)
    assert tok.id_to_piece(i) == name
    assert tok.encode(name, add_bos=False) == [i]
    assert tok.encode(f"x{name}y", add_bos=False) == (
        tok.encode("x", add_bos=False) + [i] + tok.encode("y", add_bos=False))
  sot, eot = tok.piece_to_id("<start_of_turn>"), tok.piece_to_id("<end_of_turn>")
  assert (sot, eot) == (105, 106)
  ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>", add_bos=True)
  assert ids[:2] == [tok.bos_id, sot] and ids[-1] == eot
  assert tok.decode(ids) == "<bos><start_of_turn>user\nHi<end_of_turn>"
  assert tok.decode(ids, skip_special=True) == "user\nHi"
  # Near misses stay text.
  assert sot not in tok.encode("<start_of_turn", add_bos=False)
  assert tok.piece_to_id(" " * 2) == tok.unk_id and tok.piece_to_id(WS * 2) == 138
  assert tok.decode(tok.encode("a\u2581b", add_bos=False)) == "a b"  # U+2581 is SPM's space


def test_decode_accepts_arrays_and_rejects_bad_ids(tok):
  np = pytest.importorskip("numpy")
  ids = tok.encode("Hello world", add_bos=True)
  assert tok.decode(np.asarray(ids, dtype=np.int32)) == "<bos>Hello world"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([tok.vocab_size])


def test_save_and_load_round_trip(tok, tmp_path):
  path = tmp_path / "tokenizer.model"
  tok.save(path)
  assert path.read_bytes() == tok.serialized_proto()
  loaded = Tokenizer.from_file(path)
  texts = generate_strings(400, seed=7)
  assert loaded.encode_batch(texts, add_bos=True) == tok.encode_batch(texts, add_bos=True)
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.unk_id, loaded.vocab_size) == (
      tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.vocab_size)
  # The file is a plain SentencePiece model that sentencepiece itself loads.
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(path))
  assert sp.encode("Hello world") == tok.encode("Hello world", add_bos=False)


def test_saved_model_reads_the_same_in_transformers(tok, hf_tok, tmp_path):
  """The tokenizer.model we export (HF folders use it) gives transformers the GGUF's ids."""
  transformers = pytest.importorskip("transformers")
  tok.save(tmp_path / "tokenizer.model")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
      "pad_token": "<pad>", "unk_token": "<unk>"}))
  from_model = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  texts = _main_strings()
  got = _hf_ids(from_model, texts)
  want = _hf_ids(hf_tok, texts)
  assert got == want, _first_mismatches(texts, got, want)


def test_from_file_errors(tmp_path):
  with pytest.raises(ValueError, match="missing.model"):
    Tokenizer.from_file(tmp_path / "missing.model")
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"\xff\x00not a proto\x01" * 10)
  with pytest.raises(ValueError, match="junk.model"):
    Tokenizer.from_file(junk)


# ----------------------------------------------------------------------------- GGUF metadata


def _tiny_fields(**overrides):
  """A toy SPM vocabulary in GGUF form: specials, two space runs, letters, merges, bytes."""
  tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "  ", "   ", "\n",
            "▁", "a", "b", "ab", "▁ab"] + [f"<0x{b:02X}>" for b in range(256)]
  types = [3, 3, 3, 3, 3, 4, 4, 4, 1, 1, 1, 1, 1] + [6] * 256
  scores = [-1000.0] * 8 + [-1.0, -2.0, -3.0, -4.0, -5.0] + [0.0] * 256
  fields = {
      "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
      "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
      "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
      "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
      "tokenizer.ggml.add_space_prefix": False,
  }
  fields.update(overrides)
  return {k: v for k, v in fields.items() if v is not None}


def test_tiny_vocabulary_from_metadata():
  t = Tokenizer.from_gguf_reader(FakeReader(_tiny_fields()), "tiny.gguf")
  from sentencepiece import sentencepiece_model_pb2 as pb2

  assert t.vocab_size == 13 + 256
  assert t.piece_type(3) == pb2.ModelProto.SentencePiece.UNKNOWN
  assert [t.id_to_piece(i) for i in (5, 6)] == [WS * 2, WS * 3]
  assert t.encode("ab ab", add_bos=True) == [2, 11, 12]
  assert t.encode("     ab", add_bos=False) == [6, 5, 11]  # greedy runs: 3 + 2 spaces
  assert t.encode("<start_of_turn>a\nc", add_bos=False) == [4, 9, 7, 13 + 0x63]  # 'c' via bytes
  assert t.decode([2, 4, 9, 7, 13 + 0x63, 6]) == "<bos><start_of_turn>a\nc   "


@pytest.mark.parametrize("overrides,match", [
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.bos_token_id": None}, "bos_token_id"),
    ({"tokenizer.ggml.model": "gpt2"}, "gpt2"),
    ({"tokenizer.ggml.scores": [0.0]}, "lengths"),
    ({"tokenizer.ggml.unknown_token_id": 10**6}, "outside"),
])
def test_bad_metadata_names_the_file(overrides, match):
  with pytest.raises(ValueError, match=match) as e:
    Tokenizer.from_gguf_reader(FakeReader(_tiny_fields(**overrides)), "/models/bad.gguf")
  assert "/models/bad.gguf" in str(e.value)
