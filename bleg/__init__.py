"""BLEG stages 2 and 3: graph-language tuning and the aligned adapter (METHODS.md). Not built yet: see issue 4."""
