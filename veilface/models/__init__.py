"""Face recognition models: what a version is, the built-in ones, the versioned registry, projections."""
