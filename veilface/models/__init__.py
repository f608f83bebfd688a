"""Face recognition models: the built-in recognisers, the versioned registry, projections."""
