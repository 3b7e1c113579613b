"""Attacks on privmed runs, one module per family (each cites its paper).

Every attack gets only what its threat model grants (weights the coordinator
received, a released model's outputs, released metadata); the harness
(:mod:`privmed.audit`) holds the ground truth and scores the attack with the
pure functions of :mod:`privmed.attacks.metrics`.
"""
