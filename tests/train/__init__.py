"""Tests of the offline trainer (training); they need torch."""
