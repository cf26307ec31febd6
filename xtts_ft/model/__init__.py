"""Model: loading the base XTTS (local directory or Hub id), the tiny builder, the DVAE."""
