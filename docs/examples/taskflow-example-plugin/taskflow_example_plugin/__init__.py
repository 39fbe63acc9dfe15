"""An example TaskFlow plugin: the `word_count` task type (see handlers.py)."""
