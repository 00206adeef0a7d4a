"""Process models: the worker's loop, the parent's proxy, the registry's supervision of workers."""
