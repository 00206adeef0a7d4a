"""The native HTTP API: its routes, request limits and the uvicorn front end."""
