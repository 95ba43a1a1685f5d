"""cai_jax's own prompt sets (package data), written for this project in its own words.

- `red_team.jsonl`: 210 attempts to get harmful help, tagged with one of 14 harm categories
  (violence, weapons, hacking, fraud, drugs, self-harm, hate-harassment, privacy,
  sexual-content, dangerous-chemistry, theft, misinformation, manipulation, extremism). They are
  requests only, written without graphic detail, and contain no harmful instructions themselves.
- `helpful.jsonl`: 210 ordinary requests over 14 everyday categories (cooking, coding, science,
  writing, travel, health-general, finance-general, history, math, language, home-diy, career,
  education, technology).

Each line is `{"id", "category", "prompt"}` with the prompt in the HH format
`"\\n\\nHuman: ...\\n\\nAssistant:"`; about one in seven is a two-turn conversation (a Human turn,
an Assistant reply, a second Human turn). Read them with
`cai_jax.data.sources.load_prompt_set("red_team" | "helpful")`; the files are also valid input
for the `generate` job as they are.
"""
