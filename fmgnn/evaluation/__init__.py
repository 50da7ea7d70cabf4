"""Leakage-free evaluation: stratified folds with a validation split carved from training, and metrics."""
