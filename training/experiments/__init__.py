"""training.experiments."""
