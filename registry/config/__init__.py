"""models.yaml: its schema, reading, checks and the messages a user reads."""
