"""Byte-level BPE tokenizers (Llama 3, SmolLM2, Qwen, Mistral's newer vocabularies) through the
`tokenizers` library, read from an HF folder's tokenizer.json or rebuilt from GGUF metadata.

A GGUF stores the vocabulary (in the byte-to-unicode spelling), the merges, each token's type
and the name of the pre-tokenizer (`tokenizer.ggml.pre`), but not the pre-tokenizer itself:
`PRE_TOKENIZERS` maps the names we support to the splitting rule each vocabulary was trained
with. Control and user-defined tokens (`<|im_start|>`, `<|endoftext|>`) are added tokens, so
their text encodes to their single id.

The interface is `cai_jax.tokenizer.Tokenizer`'s: `encode(text, add_bos=)`, `encode_batch`,
`decode`, the special ids, `adds_bos` (whether the checkpoint's own tokenizer starts a text with
BOS: SmolLM2 and Qwen do not, Llama 3 does), `start_ids` (what a sequence starts with), the chat
template and its end-of-turn ids. `encode(..., add_bos=True)` adds BOS only where the
checkpoint's tokenizer does.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from cai_jax import chat_template as templates

# The splitting rules of the pre-tokenizers named by llama.cpp's `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    # GPT-2's rule (the ByteLevel pre-tokenizer's own regex).
    "gpt-2": ("gpt2", None),
    "default": ("gpt2", None),
    # Every digit alone, then GPT-2's rule (SmolLM / StarCoder vocabularies).
    "smollm": ("digits+gpt2", None),
    "starcoder": ("digits+gpt2", None),
    "refact": ("digits+gpt2", None),
    "llama-bpe": ("split", _LLAMA3_SPLIT),
    "llama3": ("split", _LLAMA3_SPLIT),
    "qwen2": ("split", _QWEN2_SPLIT),
    "deepseek-r1-qwen": ("split", _QWEN2_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


def _pre_tokenizer(name: str, path: str):
  from tokenizers import Regex, pre_tokenizers

  if name not in PRE_TOKENIZERS:
    raise ValueError(f"{path}: tokenizer.ggml.pre is {name!r}; cai_jax knows "
                     f"{', '.join(sorted(PRE_TOKENIZERS))}")
  kind, regex = PRE_TOKENIZERS[name]
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "split")
  if kind == "gpt2":
    return byte_level
  if kind == "digits+gpt2":
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                  byte_level])


class BpeTokenizer:
  """A `tokenizers.Tokenizer` with the special ids and chat template of its checkpoint."""

  def __init__(self, tok, *, bos_id: int | None, eos_id: int, pad_id: int | None,
               unk_id: int | None, adds_bos: bool, chat_template: str | None,
               source: str = "<memory>"):
    self._tok = tok
    self._bos, self._eos, self._pad, self._unk = bos_id, eos_id, pad_id, unk_id
    self._adds_bos = bool(adds_bos and bos_id is not None)
    self.chat_template = chat_template
    self.source = source
    n = tok.get_vocab_size(with_added_tokens=True)
    for name, i in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id), ("unk", unk_id)):
      if i is not None and not 0 <= i < n:
        raise ValueError(f"{source}: {name} id {i} is outside the vocabulary ({n})")
    self._special_ids = frozenset(t.content for t in tok.get_added_tokens_decoder().values()
                                  if t.special)

  # --------------------------------------------------------------------------- construction
  @classmethod
  def from_gguf_reader(cls, reader, path: str) -> "BpeTokenizer":
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    def field(key: str, default=None):
      f = reader.fields.get(key)
      if f is None:
        if default is not None:
          return default
        raise ValueError(f"{path}: GGUF metadata field {key!r} is missing")
      return f.contents()

    tokens = list(field("tokenizer.ggml.tokens"))
    types = list(field("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    if len(tokens) != len(types) or not tokens:
      raise ValueError(f"{path}: tokenizer.ggml.tokens and token_type lengths differ or are 0")
    pre = field("tokenizer.ggml.pre", "default")
    specials = [(i, t) for i, (t, k) in enumerate(zip(tokens, types))
                if k in (_CONTROL, _USER_DEFINED)]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise ValueError(f"{path}: tokenizer.ggml.tokens repeats a token")
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in ("llama-bpe", "llama3"))
    tok = Tokenizer(model)
    if PRE_TOKENIZERS.get(pre, ("", None))[1] == _QWEN2_SPLIT:
      tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(pre, path)
    tok.decoder = decoders.ByteLevel()
    # Already in the vocabulary at their ids; as added tokens they also match whole in text.
    for i, t in specials:
      if types[i] == _CONTROL:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
      else:
        tok.add_tokens([AddedToken(t, normalized=False)])
      if tok.token_to_id(t) != i:
        raise ValueError(f"{path}: special token {t!r} landed at id {tok.token_to_id(t)}, not {i}")

    def opt_id(key):
      f = reader.fields.get(key)
      return None if f is None else int(f.contents())

    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    return cls(tok, bos_id=opt_id("tokenizer.ggml.bos_token_id"),
               eos_id=int(field("tokenizer.ggml.eos_token_id")),
               pad_id=opt_id("tokenizer.ggml.padding_token_id"),
               unk_id=opt_id("tokenizer.ggml.unknown_token_id"),
               adds_bos=bool(add_bos.contents()) if add_bos is not None else False,
               chat_template=templates.gguf_template(reader), source=path)

  @classmethod
  def from_folder(cls, folder: str) -> "BpeTokenizer":
    """tokenizer.json + tokenizer_config.json (special tokens, add_bos_token, chat template)."""
    from tokenizers import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type
      raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = {}
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        cfg = json.load(f)
    template = templates.read_folder_template(folder)

    def token_id(key):
      value = cfg.get(key)
      if isinstance(value, dict):
        value = value.get("content")
      if value is None:
        return None
      i = tok.token_to_id(value)
      if i is None:
        raise ValueError(f"{cfg_path}: {key} {value!r} is not in the vocabulary")
      return i

    eos = token_id("eos_token")
    if eos is None:
      raise ValueError(f"{cfg_path}: no eos_token (needed to end sequences)")
    return cls(tok, bos_id=token_id("bos_token"), eos_id=eos, pad_id=token_id("pad_token"),
               unk_id=token_id("unk_token"), adds_bos=bool(cfg.get("add_bos_token", False)),
               chat_template=template, source=folder)

  def save_hf_files(self, folder: str, *, model_max_length: int,
                    tokenizer_class: str | None = None) -> None:
    """tokenizer.json and a tokenizer_config.json that transformers reads as a fast tokenizer
    (`tokenizer_class` is for SentencePiece files and is not needed here)."""
    self._tok.save(os.path.join(folder, "tokenizer.json"))
    piece = lambda i: None if i is None else self._tok.id_to_token(i)  # noqa: E731
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self._adds_bos,
           "add_eos_token": False, "bos_token": piece(self._bos), "eos_token": piece(self._eos),
           "pad_token": piece(self._pad), "unk_token": piece(self._unk),
           "model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    if self.chat_template:
      cfg["chat_template"] = self.chat_template
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
      json.dump(cfg, f, indent=2)

  # --------------------------------------------------------------------------- encode/decode
  def encode(self, text: str, *, add_bos: bool) -> list[int]:
    return self.encode_batch([text], add_bos=add_bos)[0]

  def encode_batch(self, texts: Iterable[str], *, add_bos: bool) -> list[list[int]]:
    if isinstance(texts, str):
      raise TypeError("encode_batch takes a sequence of strings; use encode for one string")
    prefix = self.start_ids if add_bos else []
    encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [prefix + e.ids for e in encoded]

  def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
    ids = [int(i) for i in ids]
    n = self.vocab_size
    for i in ids:
      if not 0 <= i < n:
        raise ValueError(f"token id {i} is outside the vocabulary (size {n})")
    return self._tok.decode(ids, skip_special_tokens=skip_special)

  def render_chat(self, messages, *, add_generation_prompt: bool) -> str:
    """`messages` in the checkpoint's chat template (`cai_jax.chat_template.render`)."""
    piece = lambda i: None if i is None else self._tok.id_to_token(i)  # noqa: E731
    return templates.render(
        self.chat_template, messages, add_generation_prompt=add_generation_prompt,
        special_tokens={"bos_token": piece(self._bos), "eos_token": piece(self._eos)},
        source=self.source)

  # --------------------------------------------------------------------------- vocabulary
  @property
  def adds_bos(self) -> bool:
    return self._adds_bos

  @property
  def start_ids(self) -> list[int]:
    """What every sequence starts with: [BOS] where the checkpoint adds one, else nothing."""
    return [self._bos] if self._adds_bos else []

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def pad_id(self) -> int:
    """The padding id (EOS where the checkpoint names none: padded slots are masked anyway)."""
    return self._eos if self._pad is None else self._pad

  @property
  def unk_id(self) -> int | None:
    return self._unk

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def end_of_turn_ids(self) -> tuple[int, ...]:
    """Ids that end an assistant turn in the chat template (`<|im_end|>`, `<|eot_id|>`)."""
    out = []
    for text in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
      i = self._tok.token_to_id(text)
      if i is not None and text in self._special_ids:
        out.append(i)
    return tuple(out)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def piece_to_id(self, s: str) -> int | None:
    return self._tok.token_to_id(s)
