"""rspo-bench: sweeps, evaluation and reports for regularized self-play alignment."""

__version__ = "0.1.0"
