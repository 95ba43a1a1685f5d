"""A stand-in for gguf.GGUFReader's metadata, for building tokenizers without a GGUF file."""


class _Field:
  def __init__(self, value):
    self._value = value

  def contents(self):
    return self._value


class FakeReader:
  """Just enough of gguf.GGUFReader (`.fields[key].contents()`) for Tokenizer.from_gguf_reader."""

  def __init__(self, fields):
    self.fields = {k: _Field(v) for k, v in fields.items()}
