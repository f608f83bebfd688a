"""Veilface: face recognition whose templates are only ever stored and matched under CKKS encryption."""

__version__ = "0.1.0"
