"""The training library: the recipes (`gpt.GptRecipe`, `decoder.DecoderRecipe`) and the few
pieces both share: the process they run in (`runtime`), their run directory (`rundir`), states
and checkpoints (`checkpoints`), per-step seeding, divergence guard and distributed mean
(`steps`), TensorBoard (`logs`) and the on-disk cache of per-clip features (`cache`)."""
