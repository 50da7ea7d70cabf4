"""FIMP tasks: data, masking and metrics of each reconstruction task."""
