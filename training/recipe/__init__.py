"""training.recipe.core."""
