"""The Open Inference Protocol (KServe V2) over HTTP: routes, model signatures, tensors."""
