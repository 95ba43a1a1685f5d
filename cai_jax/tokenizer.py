"""SentencePiece tokenizers, rebuilt from a GGUF vocabulary or read from
tokenizer.model; `load_tokenizer` / `tokenizer_from_gguf_reader` pick this or byte-level BPE
(`cai_jax.bpe_tokenizer`) by what a checkpoint holds.

The GGUF holds the vocabulary (pieces, scores, types) but not the SentencePiece model itself, so
`from_gguf_reader` writes a ModelProto with the GGUF's settings: BPE, byte fallback, the dummy
prefix it names, no whitespace collapsing, identity normalization. SentencePiece never matches
CONTROL pieces in text, so `<start_of_turn>` and the like are split off with one regex before
encoding; that keeps chat templates written as plain text identical to the reference tokenizer.

Runs of 32+ spaces come out as SentencePiece segments them (31-space pieces first), which is not
what transformers' GGUF tokenizer does; tests/test_tokenizer.py documents the difference.

BOS is never implicit: every `encode` call says `add_bos=`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from cai_jax import chat_template as templates

_Piece = sp_pb2.ModelProto.SentencePiece

# llama.cpp's token types (enum llama_token_type) -> SentencePiece piece types.
_GGUF_TO_SPM_TYPE = {
    1: _Piece.NORMAL,
    2: _Piece.UNKNOWN,
    3: _Piece.CONTROL,
    4: _Piece.USER_DEFINED,
    5: _Piece.UNUSED,
    6: _Piece.BYTE,
}
_WS = "\u2581"  # SentencePiece's visible space
# User-defined pieces without whitespace ("<table>", "[multimodal]") are split off up front like
# control pieces (SentencePiece would match them too); the whitespace runs are left to
# SentencePiece so ordinary text stays one segment.
_TAG_LIKE = re.compile(r"[^\s\u2581]+")


class Tokenizer:
  """A SentencePiece tokenizer. BOS is explicit at every call site."""

  def __init__(self, proto: sp_pb2.ModelProto, source: str = "<memory>",
               chat_template: str | None = None):
    self._proto = proto
    self.source = source
    self.chat_template = chat_template  # jinja2, from tokenizer_config.json or the GGUF
    self._serialized = proto.SerializeToString()
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(self._serialized)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with terse messages
      raise ValueError(f"{source}: not a usable SentencePiece model ({e})") from e
    specials: dict[str, int] = {}
    for i, p in enumerate(proto.pieces):
      if p.type in (_Piece.CONTROL, _Piece.UNKNOWN) or (
          p.type == _Piece.USER_DEFINED and _TAG_LIKE.fullmatch(p.piece)):
        specials[p.piece] = i
    self._special_ids = specials
    # Ids that SentencePiece decodes to nothing (control) or to " ⁇ " (unknown); decode spells
    # them as their piece text instead, so special-token text survives a round trip.
    self._literal_ids = frozenset(i for i, p in enumerate(proto.pieces)
                                  if p.type in (_Piece.CONTROL, _Piece.UNKNOWN))
    # Longest first, so a special token that is a prefix of another never shadows it.
    alts = sorted(specials, key=lambda s: (-len(s), s))
    self._split_re = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None

  # --------------------------------------------------------------------------- construction
  @classmethod
  def from_gguf_reader(cls, reader, path_for_errors: str) -> "Tokenizer":
    """Builds the SentencePiece model from a GGUF's `tokenizer.ggml.*` metadata."""
    path = path_for_errors

    def field(key: str):
      f = reader.fields.get(key)
      if f is None:
        raise ValueError(f"{path}: GGUF metadata field {key!r} is missing (no tokenizer?)")
      return f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "llama":
      raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; only SentencePiece ('llama') "
                       "vocabularies are supported")
    tokens = field("tokenizer.ggml.tokens")
    scores = field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    if not (len(tokens) == len(scores) == len(types)) or not tokens:
      raise ValueError(f"{path}: tokenizer.ggml.tokens/scores/token_type lengths differ or are 0 "
                       f"({len(tokens)}, {len(scores)}, {len(types)})")
    ids = {name: int(field(f"tokenizer.ggml.{name}_token_id"))
           for name in ("bos", "eos", "unknown", "padding")}
    for name, i in ids.items():
      if not 0 <= i < len(tokens):
        raise ValueError(f"{path}: tokenizer.ggml.{name}_token_id={i} is outside the vocabulary")
    # llama.cpp's default for SPM vocabularies is to add the space prefix; a GGUF may say False.
    add_prefix = reader.fields.get("tokenizer.ggml.add_space_prefix")
    add_prefix = True if add_prefix is None else bool(add_prefix.contents())

    proto = sp_pb2.ModelProto()
    seen: dict[str, int] = {}
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types)):
      # GGUF stores the whitespace-run pieces with real spaces; SentencePiece sees escaped text.
      piece = tok.replace(" ", _WS)
      if piece in seen:
        raise ValueError(f"{path}: tokens {seen[piece]} and {i} are the same piece {piece!r}")
      seen[piece] = i
      sp_type = _GGUF_TO_SPM_TYPE.get(int(typ))
      if sp_type is None:
        raise ValueError(f"{path}: token {i} ({tok!r}) has unknown token_type {typ}")
      if i == ids["unknown"]:
        sp_type = _Piece.UNKNOWN  # some GGUFs mark <unk> CONTROL; SentencePiece needs UNKNOWN
      proto.pieces.add(piece=piece, score=float(score), type=sp_type)

    ts = proto.trainer_spec
    ts.model_type = sp_pb2.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = any(t == 6 for t in types)
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.treat_whitespace_as_suffix = False
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = (
        ids["unknown"], ids["bos"], ids["eos"], ids["padding"])
    ts.unk_piece = proto.pieces[ids["unknown"]].piece
    ts.bos_piece = proto.pieces[ids["bos"]].piece
    ts.eos_piece = proto.pieces[ids["eos"]].piece
    ts.pad_piece = proto.pieces[ids["padding"]].piece
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = add_prefix
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    ns.precompiled_charsmap = b""
    return cls(proto, path, chat_template=templates.gguf_template(reader))

  @classmethod
  def from_file(cls, path) -> "Tokenizer":
    """Reads a serialized SentencePiece ModelProto (a `tokenizer.model`)."""
    path = os.fspath(path)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise ValueError(f"{path}: cannot read tokenizer model ({e.strerror or e})") from e
    proto = sp_pb2.ModelProto()
    try:
      proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
      raise ValueError(f"{path}: not a SentencePiece model file ({e})") from e
    if not proto.pieces:
      raise ValueError(f"{path}: not a SentencePiece model file (no pieces)")
    return cls(proto, path, chat_template=templates.read_folder_template(os.path.dirname(path)))

  def save(self, path) -> None:
    """Writes the serialized model: the `tokenizer.model` that SentencePiece and HF both read."""
    with open(os.fspath(path), "wb") as f:
      f.write(self._serialized)

  def save_hf_files(self, folder: str, *, model_max_length: int,
                    tokenizer_class: str = "LlamaTokenizer") -> None:
    """tokenizer.model and the tokenizer_config.json with which transformers reads it (as
    `tokenizer_class`, the family's `sentencepiece_class`)."""
    self.save(os.path.join(folder, "tokenizer.model"))
    piece = lambda i: self._proto.pieces[i].piece  # noqa: E731
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
      json.dump({"tokenizer_class": tokenizer_class, "add_bos_token": True,
                 "add_eos_token": False, "bos_token": piece(self.bos_id),
                 "eos_token": piece(self.eos_id), "pad_token": piece(self.pad_id),
                 "unk_token": piece(self.unk_id), "padding_side": "left",
                 "model_max_length": model_max_length,
                 **({"chat_template": self.chat_template} if self.chat_template else {})},
                f, indent=2)

  def render_chat(self, messages, *, add_generation_prompt: bool) -> str:
    """`messages` in the checkpoint's chat template (`cai_jax.chat_template.render`)."""
    piece = lambda i: self._proto.pieces[i].piece  # noqa: E731
    return templates.render(self.chat_template, messages,
                            add_generation_prompt=add_generation_prompt,
                            special_tokens={"bos_token": piece(self.bos_id),
                                            "eos_token": piece(self.eos_id)},
                            source=self.source)

  @property
  def adds_bos(self) -> bool:
    """Whether the checkpoint's own tokenizer puts BOS before a text (ours always do)."""
    return True

  @property
  def start_ids(self) -> list[int]:
    """What every sequence starts with: [BOS]."""
    return [self.bos_id]

  @property
  def end_of_turn_ids(self) -> tuple[int, ...]:
    """Ids that end an assistant turn in the checkpoint's chat format (`<end_of_turn>`)."""
    i = self._sp.PieceToId("<end_of_turn>")
    return () if i == self.unk_id else (i,)

  def serialized_proto(self) -> bytes:
    return self._serialized

  # --------------------------------------------------------------------------- encode/decode
  def encode(self, text: str, *, add_bos: bool) -> list[int]:
    return self.encode_batch([text], add_bos=add_bos)[0]

  def encode_batch(self, texts: Iterable[str], *, add_bos: bool) -> list[list[int]]:
    """Encodes many texts with one SentencePiece call over all their non-special segments."""
    if isinstance(texts, str):
      raise TypeError("encode_batch takes a sequence of strings; use encode for one string")
    texts = list(texts)
    prefix = [self.bos_id] if add_bos else []
    if self._split_re is None:
      return [prefix + ids for ids in self._sp.EncodeAsIds(texts)]
    # Each text becomes [plain, special, plain, special, ..., plain] (re.split with a group).
    parts = [self._split_re.split(t) for t in texts]
    plain = [seg for p in parts for seg in p[0::2]]
    encoded = iter(self._sp.EncodeAsIds(plain))
    out = []
    for p in parts:
      ids = list(prefix)
      for j, seg in enumerate(p):
        if j % 2:
          ids.append(self._special_ids[seg])
        else:
          ids.extend(next(encoded))
      out.append(ids)
    return out

  def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
    """Text for ids; control and <unk> ids come out as their piece text unless skip_special."""
    ids = [int(i) for i in ids]
    n = len(self._proto.pieces)
    for i in ids:
      if not 0 <= i < n:
        raise ValueError(f"token id {i} is outside the vocabulary (size {n})")
    out: list[str] = []
    run: list[int] = []
    for i in ids:
      if i in self._literal_ids:
        if run:
          out.append(self._sp.DecodeIds(run))
          run = []
        if not skip_special:
          out.append(self._proto.pieces[i].piece)
      else:
        run.append(i)
    if run:
      out.append(self._sp.DecodeIds(run))
    return "".join(out)

  # --------------------------------------------------------------------------- vocabulary
  @property
  def bos_id(self) -> int:
    return self._proto.trainer_spec.bos_id

  @property
  def eos_id(self) -> int:
    return self._proto.trainer_spec.eos_id

  @property
  def pad_id(self) -> int:
    return self._proto.trainer_spec.pad_id

  @property
  def unk_id(self) -> int:
    return self._proto.trainer_spec.unk_id

  @property
  def vocab_size(self) -> int:
    return len(self._proto.pieces)

  def id_to_piece(self, i: int) -> str:
    return self._proto.pieces[int(i)].piece

  def piece_to_id(self, s: str) -> int:
    """Id of a piece, or unk_id if the vocabulary has no such piece (SentencePiece's rule)."""
    return self._sp.PieceToId(s)

  def piece_type(self, i: int) -> int:
    """SentencePiece type of piece i (sentencepiece_model_pb2.ModelProto.SentencePiece.Type)."""
    return self._proto.pieces[int(i)].type


def tokenizer_from_gguf_reader(reader, path: str):
  """The tokenizer a GGUF's `tokenizer.ggml.model` names: SentencePiece ('llama') or byte-level
  BPE ('gpt2')."""
  field = reader.fields.get("tokenizer.ggml.model")
  if field is None:
    raise ValueError(f"{path}: GGUF metadata field 'tokenizer.ggml.model' is missing "
                     "(no tokenizer?)")
  kind = field.contents()
  if kind == "gpt2":
    from cai_jax.bpe_tokenizer import BpeTokenizer
    return BpeTokenizer.from_gguf_reader(reader, path)
  if kind == "llama":
    return Tokenizer.from_gguf_reader(reader, path)
  raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}; cai_jax reads 'llama' "
                   "(SentencePiece) and 'gpt2' (byte-level BPE) vocabularies")


def load_tokenizer(folder: str):
  """The tokenizer of a checkpoint folder: tokenizer.json (byte-level BPE) or tokenizer.model
  (SentencePiece)."""
  if os.path.isfile(os.path.join(folder, "tokenizer.json")):
    from cai_jax.bpe_tokenizer import BpeTokenizer
    return BpeTokenizer.from_folder(folder)
  return Tokenizer.from_file(os.path.join(folder, "tokenizer.model"))
