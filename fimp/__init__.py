"""FIMP: foundation-model-informed message passing (METHODS.md, "FIMP"). Not built yet: see issue 8."""
