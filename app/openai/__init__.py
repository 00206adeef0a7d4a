"""The OpenAI-compatible API: embeddings, chat and text completions."""
