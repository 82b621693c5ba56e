"""Datasets: the project's on-disk format, readers of public datasets' layouts, the synthetic world."""
