"""Benchmarks of Veilface components."""
