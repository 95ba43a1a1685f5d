"""Prompts for the reference checks against transformers (written for cai_jax).

`long_prompt()` is over 1,024 tokens of varied, non-repetitive text, so the 512-token sliding
window of the local layers matters and log-prob tails stay in a natural range.
"""

import random

SHORT_PROMPTS = [
    "The capital of France is",
    "\n\nHuman: How do I make a good cup of tea?\n\nAssistant:",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Überraschung! Les élèves ont répondu: 東京は日本の首都です。 🙂 Then we",
]

_PEOPLE = ["Amara", "Bruno", "Chen", "Dagny", "Emeka", "Farah", "Gustav", "Hana", "Ivo", "Jun",
           "Kofi", "Lucia", "Mateo", "Nadia", "Oskar", "Priya"]
_PLACES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromsø", "Adelaide", "Tbilisi", "Lyon",
           "Hanoi", "Cusco", "Krakow", "Accra", "Halifax", "Porto", "Dakar", "Busan"]
_THINGS = ["a brass telescope", "two crates of oranges", "a handwritten atlas", "a violin",
           "seventeen postcards", "a bicycle with a bent wheel", "a jar of saffron",
           "an old radio", "a chess set", "a box of seeds", "a wool blanket", "a lantern"]
_VERBS = ["carried", "sold", "repaired", "borrowed", "painted", "photographed", "lost",
          "found", "shipped", "described"]
_PARAGRAPHS = [
    "Rivers shape the towns that grow beside them. A ford becomes a bridge, the bridge "
    "becomes a market, and within a few generations the market has a cathedral, a tax office "
    "and a quarrel about who should pay to dredge the harbour.",
    "When the committee met on Thursday, nobody could agree on the budget. The treasurer "
    "wanted to cut travel by a third; the librarian argued that the archive would flood "
    "again unless the roof was fixed before winter.",
    "To estimate the height of a tree, walk away from it until the top appears at an angle "
    "of forty-five degrees, then measure the distance back to the trunk and add your eye "
    "height.",
    "In the evening the wind dropped, the gulls settled on the breakwater, and the ferry "
    "from the island arrived forty minutes late with a cargo of bicycles and sleepy tourists.",
]


def long_prompt(seed: int = 0, sentences: int = 45) -> str:
  rng = random.Random(seed)
  parts = []
  for i in range(sentences):
    if i % 12 == 0:
      parts.append(_PARAGRAPHS[(i // 12) % len(_PARAGRAPHS)])
    who, place, thing, verb = (rng.choice(_PEOPLE), rng.choice(_PLACES), rng.choice(_THINGS),
                               rng.choice(_VERBS))
    hour, minute, year = rng.randint(1, 12), rng.randint(0, 59), rng.randint(1890, 2024)
    parts.append(f"In {year}, {who} {verb} {thing} in {place} at {hour}:{minute:02d}.")
  return " ".join(parts)
