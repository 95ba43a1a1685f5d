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


def small_tokenizer(specials: tuple[str, ...] = ()) -> Tokenizer:
  """<pad> <eos> <bos> <unk>, the 256 byte pieces, then printable ASCII and newline as pieces,
  then `specials` as control pieces."""
  chars = ["\u2581" if c == " " else c for c in map(chr, range(33, 127))] + ["\u2581", "\n"]
  chars = list(dict.fromkeys(chars))
  tokens = (["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + chars
            + list(specials))
  types = [3, 3, 3, 3] + [6] * 256 + [1] * len(chars) + [3] * len(specials)
  scores = [0.0] * 260 + [-1.0] * len(chars) + [0.0] * len(specials)
  return Tokenizer.from_gguf_reader(FakeReader({
      "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
      "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
      "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
      "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
      "tokenizer.ggml.add_space_prefix": False}), "small-vocab")


def varied_params(params, seed: int = 2):
  """`params` with norm scales that make a tiny model's greedy output varied: randomly
  initialised Gemma mostly repeats its last input token (tied embeddings), which would make
  generation tests vacuous. More extreme scales vary it more but amplify float32 rounding past
  1e-4; with these, cached and uncached log-probs differ by at most ~5e-5."""
  import flax
  import numpy as np
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  for k, v in flat.items():
    if k[-1] != "scale":
      continue
    if k[-2] in ("post_attn_norm", "post_ffw_norm"):
      new = 10.0 + rng.normal(0.0, 2.0, v.shape)   # blocks outweigh the token embedding
    elif k[-2] in ("q_norm", "k_norm"):
      new = 2.0 + rng.normal(0.0, 0.3, v.shape)    # sharper attention
    elif k[-2] == "final_norm":
      new = np.full(v.shape, -0.8)                  # logits of moderate spread
    else:
      new = rng.normal(0.0, 0.3, v.shape)
    flat[k] = jnp.asarray(new, jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


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


# A ChatML template of the SmolLM2 / Qwen kind: each message in <|im_start|>role ... <|im_end|>.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                   "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chatml_tokenizer(chat_template: str | None = CHATML_TEMPLATE):
  """A byte-level BPE tokenizer (the 256 byte symbols, no merges) with ChatML's special tokens
  <|endoftext|> (EOS), <|im_start|> and <|im_end|>, and no BOS."""
  from tokenizers import Tokenizer as HFTokenizer
  from tokenizers import decoders, models, pre_tokenizers

  from cai_jax.bpe_tokenizer import BpeTokenizer

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  return BpeTokenizer(tok, bos_id=None, eos_id=tok.token_to_id("<|endoftext|>"), pad_id=None,
                      unk_id=None, adds_bos=False, chat_template=chat_template,
                      source="chatml-bytes")


def write_chat_checkpoint(folder: str, *, seed: int = 0) -> str:
  """A tiny Llama-family HF folder with `chatml_tokenizer` (its chat template included), its
  output flattened like `write_hf_checkpoint(flat_logits=True)`."""
  tok = chatml_tokenizer()
  config = families.preset("tiny-llama", vocab_size=tok.vocab_size)
  params = jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
  params["final_norm"]["scale"] = jnp.full_like(params["final_norm"]["scale"], 0.1)
  hf.save_hf_folder(folder, config, params, tok)
  return folder


PIPELINE_WORDS = ["apples", "rivers", "quiet", "music", "paper", "stone", "green", "light"]


def write_pipeline_data(folder) -> dict[str, str]:
  """Small inputs for pipeline runs in `folder`: 4 human comparisons (HH chosen/rejected), 4
  prompts, 2 helpfulness prompts and 2 probe prompts; returns their paths."""
  import json
  import os
  w = PIPELINE_WORDS
  paths = {k: os.path.join(str(folder), f"{k}.jsonl")
           for k in ("comparisons", "prompts", "helpful", "probes")}
  with open(paths["comparisons"], "w") as f:
    for i in range(4):
      p = f"\n\nHuman: what about {w[i]}?\n\nAssistant:"
      f.write(json.dumps({"chosen": f"{p} {w[i + 1]} {w[i + 2]}.",
                          "rejected": f"{p} {w[i + 3]} no."}) + "\n")
  with open(paths["prompts"], "w") as f:
    for i in range(4):
      f.write(json.dumps({"id": f"p{i}", "prompt": f"\n\nHuman: tell me about {w[i]}"
                                                   "\n\nAssistant:"}) + "\n")
  with open(paths["helpful"], "w") as f:
    for i in range(2):
      f.write(json.dumps({"id": f"h{i}", "prompt": f"\n\nHuman: how do I cook {w[i + 2]}?"
                                                   "\n\nAssistant:"}) + "\n")
  with open(paths["probes"], "w") as f:
    for i in range(2):
      f.write(json.dumps({"id": f"q{i}", "prompt": f"\n\nHuman: what is {w[i + 4]}?"
                                                   "\n\nAssistant:"}) + "\n")
  return paths


def write_short_constitution(path) -> str:
  """The default constitution cut to its first few-shot example of each kind and two principles
  ("harmless-short"): a tiny model's contexts stay short (many simulated devices or processes
  on 2 cores)."""
  import json
  import os
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, "..", "constitutions", "harmless.json")) as f:
    c = json.load(f)
  for k in ("critique_revision", "mc_principles"):
    c[k] = c[k][:2]
  for k in ("critique_revision_few_shot", "helpful_few_shot", "mc_few_shot", "cot_few_shot"):
    c[k] = c[k][:1]
  c["name"] = "harmless-short"
  with open(path, "w") as f:
    json.dump(c, f)
  return str(path)


def write_random_pm(path: str, model, *, seed: int = 3) -> dict:
  """A preference model folder at PATH: `model`'s decoder (a loader.LoadedModel) under a head of
  scale 1 drawn from `seed`, scoring sequences of up to 128 tokens with EOS appended; returns
  its parameters."""
  from cai_jax.model import heads
  params = {"decoder": model.params,
            "head": heads.init_head(model.config, jax.random.PRNGKey(seed), scale=1.0)}
  heads.save_pm(path, model.config, params, model.tokenizer,
                {"append_eos": True, "max_length": 128})
  return params
