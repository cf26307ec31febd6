"""What the GPT and decoder training loops share: the run directory (lock, checkpoints),
distributed set-up, mixed precision and the on-disk cache of per-clip features."""
