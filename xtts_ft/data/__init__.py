"""Data: the Sample contract and manifests, corpus formatters, audio and text operations."""
