"""Baselines every method is compared against, on the same folds."""
