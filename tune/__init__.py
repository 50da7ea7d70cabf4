"""Ray Tune search spaces and sweeps for BLEG and FIMP. Not built yet: see issue 5."""
