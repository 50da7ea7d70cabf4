"""BLEG stage 1: describe each subject's brain graph, ask an LLM about it, keep validated JSON answers."""
