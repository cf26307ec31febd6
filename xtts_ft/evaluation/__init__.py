"""Evaluation: ASR backends (`asr`), objective metrics as plain functions over arrays (`metrics`),
transcript validation for prepare (`validation`), and scoring checkpoints on probe sets: what is
spoken (`probes`), each model on each probe (`scoring`), what fine-tuning cost the base
(`forgetting`), the plots (`plots`) and the report with the export's recorded metrics (`report`)."""
