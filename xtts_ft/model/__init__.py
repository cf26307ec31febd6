"""Model: XTTS itself as files and modules: loading a base (local directory, Hub id or the tiny
builder), the tokenizer, extending a vocabulary, building an export in the stock layout, the model card,
DVAE features, the decoder's framing and losses, LoRA."""
