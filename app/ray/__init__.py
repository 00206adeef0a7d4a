"""Ray Serve: the gateway, the replicas, the model-aware router, `serve --ray`."""
