"""training.engine."""
