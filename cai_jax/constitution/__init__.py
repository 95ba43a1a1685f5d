"""Constitutions: our JSON format (`schema`), the paper's prompt files (`paper_format`) and the
exact texts sent to the model (`prompts`). See constitutions/README.md for the file format."""

from cai_jax.constitution.loading import available_constitutions, load_constitution
from cai_jax.constitution.schema import (CONSTITUTIONS_DIR, DEFAULT, Constitution,
                                         ConstitutionError, CritiqueRevisionPrinciple,
                                         MCExample, MCPrinciple)

__all__ = [
    "CONSTITUTIONS_DIR", "DEFAULT", "Constitution", "ConstitutionError",
    "CritiqueRevisionPrinciple", "MCExample", "MCPrinciple", "available_constitutions",
    "load_constitution",
]
