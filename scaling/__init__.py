"""Scaling-law experiments on transformer language models."""
