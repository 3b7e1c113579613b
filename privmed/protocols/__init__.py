"""Protocols of the review, each in its own file, all talking through a Flower Grid."""
