"""Tables and figures built from the run folders' results tables; never recomputes a measurement."""
