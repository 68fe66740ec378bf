"""Engines: train, evaluate, predict, export, bench; each takes a Config and returns a result."""
