"""diffctl: config-driven command-line tool to train, sample and evaluate diffusion models."""

__version__ = "0.1.0"
