"""Datasets: the on-disk dataset format (reader and writer) and the synthetic world."""
