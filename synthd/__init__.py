"""synthd: a daemon that turns raw text into fine-tuning datasets, exactly once."""

__version__ = "0.1.0"
