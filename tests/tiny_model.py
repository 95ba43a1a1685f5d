"""A tiny Gemma checkpoint for fast tests: the tiny preset with a small byte-fallback
SentencePiece vocabulary, saved as an HF folder."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cai_jax.checkpoints import hf
from cai_jax.model import families
from cai_jax.model import decoder
from cai_jax.tokenizer import Tokenizer
from fake_gguf import FakeReader


def small_tokenizer() -> Tokenizer:
  """<pad> <eos> <bos> <unk>, the 256 byte pieces, then printable ASCII and newline as pieces."""
  chars = ["\u2581" if c == " " else c for c in map(chr, range(33, 127))] + ["\u2581", "\n"]
  chars = list(dict.fromkeys(chars))
  tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + chars
  types = [3, 3, 3, 3] + [6] * 256 + [1] * len(chars)
  scores = [0.0] * 260 + [-1.0] * len(chars)
  return Tokenizer.from_gguf_reader(FakeReader({
      "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
      "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
      "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
      "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
      "tokenizer.ggml.add_space_prefix": False}), "small-vocab")


def tiny_config(tok: Tokenizer | None = None, **overrides):
  tok = tok or small_tokenizer()
  return families.preset("tiny", vocab_size=tok.vocab_size, **overrides)


def write_hf_checkpoint(folder: str, *, seed: int = 0, flat_logits: bool = False,
                        **overrides) -> str:
  """`flat_logits` flattens the output distribution (final norm scale -0.9) so that different
  sampling seeds give different outputs; `overrides` change the tiny preset's shape."""
  tok = small_tokenizer()
  config = tiny_config(tok, **overrides)
  params = jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
  if flat_logits:
    params["final_norm"]["scale"] = jnp.full_like(params["final_norm"]["scale"], -0.9)
  hf.save_hf_folder(folder, config, params, tok)
  return folder
