"""The FastAPI adapter around the registry core."""
