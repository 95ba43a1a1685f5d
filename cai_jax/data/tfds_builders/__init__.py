"""TFDS builders for cai_jax's prompt data, written as array_record files, read without TensorFlow.

    from cai_jax.data import tfds_builders
    test = tfds_builders.load_split("red_team", "test", data_dir="~/tfds")  # prepares if needed
    test[0]  # {"id": "rt-....", "prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "category": "..."}

See `builders.py` for the datasets, their features and the split rule.
"""

from cai_jax.data.tfds_builders.builders import (
    BUILDERS,
    CaiHelpfulPrompts,
    CaiHhComparisons,
    CaiRedTeamPrompts,
    DecodedSource,
    builder_class,
    load_prepared,
    load_split,
    prepare,
    split_for,
)

__all__ = [
    "BUILDERS", "CaiHelpfulPrompts", "CaiHhComparisons", "CaiRedTeamPrompts", "DecodedSource",
    "builder_class", "load_prepared", "load_split", "prepare", "split_for",
]
