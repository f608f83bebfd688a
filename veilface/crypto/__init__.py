"""CKKS cryptography of Veilface.

Everything here works with public keys only, except :mod:`veilface.crypto.secret`, which
holds the secret key and is imported by the gateway (and gateway-side tools) alone.
"""
