"""Entry points: the ``fmgnn`` CLI and the jobs it runs (``python -m pipelines.<name>``)."""
