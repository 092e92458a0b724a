"""Everything that runs: the store, the engine, run drivers and the handler context."""
