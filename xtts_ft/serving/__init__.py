"""Serving: the HTTP layer over inference/ — the Gradio page (`web`) that puts one synthesizer
behind a browser form. It turns requests into the synthesizer's calls and its errors into
answers; it holds no synthesis of its own."""
