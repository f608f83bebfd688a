"""Matcher-side encrypted search: packed blocks, delta, compaction, shard, ranking.

Nothing in this package holds or loads a secret key; it works with a
:class:`veilface.crypto.public.PublicContext` only.
"""
