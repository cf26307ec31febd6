"""Serving: the HTTP layer over inference/ — the Gradio page (`web`) that puts one synthesizer behind a
browser form, and the OpenAI-compatible speech server of `xtts-ft serve`: its engine (`scheduler`, the
requests of concurrent clients batched across voices and LoRA adapters) and its FastAPI app (`openai_api`,
with `audio_formats`, `voices` and `metrics`). They turn requests into the synthesizer's calls and its
errors into answers; they hold no synthesis of their own."""
