"""Data: the Sample contract and manifests, corpus formatters, audio and text operations, the text
cleaners (one module per language under `cleaners/`), training batches and the sampler.

The bottom layer: from the package it imports only `xtts_ft.io_utils` and `xtts_ft.model.constants`.
What needs a model (ASR for cutting long recordings) is handed in by the stage that calls it.
"""
