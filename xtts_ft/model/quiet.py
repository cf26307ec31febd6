"""transformers' warnings about coqui's GPT-2 config, dropped while coqui builds the model (loading a
checkpoint, or building the tiny one)."""

from __future__ import annotations

import contextlib
import logging

# coqui's GPT builds its GPT-2 body from a GPT2Config with an "unused" 256-token vocabulary (the
# body's token embedding is deleted: text and audio have their own) and GPT-2's text ids (50256)
# as bos/eos, which nothing reads; transformers warns about them, and coqui takes no argument to
# set them. Exactly that record is dropped while coqui builds the model; any other still shows.
UNUSED_GPT2_TOKEN_IDS = "_token_id must be `None` or an integer within the vocabulary (between 0 and 255)"


class _DropUnusedGpt2TokenIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return UNUSED_GPT2_TOKEN_IDS not in record.getMessage()


@contextlib.contextmanager
def unused_gpt2_token_ids_unreported():
    logger = logging.getLogger("transformers.configuration_utils")
    dropper = _DropUnusedGpt2TokenIds()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)
