"""Evaluation: ASR backends (`asr`), objective metrics as plain functions over arrays (`metrics`),
transcript validation for prepare (`validation`), and scoring checkpoints on probe sets with their
report, plots and forgetting."""
