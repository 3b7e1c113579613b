"""Synthetic data: generators trained with differential privacy (DP-CGAN) and their evaluation."""
