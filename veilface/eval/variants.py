"""Embedding variants: a model version, with or without flip fusion, or an ensemble of them.

A variant is written ``member[+member...]`` where a member is a model version of the registry
(``edgeface_xs``, a trained version, ``edgeface_xs:pca128`` for compact templates...) optionally
followed by ``@flip`` or ``@noflip`` (default: the ``flip_fusion`` setting). An ensemble joins its
members' unit embeddings as the embedder joins those of an ensemble model version
(:func:`~veilface.face.embed.join_embeddings`): the cosine similarity of two joined embeddings is the
mean of the members' cosines. Every member is computed once per face however many variants use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from veilface.face.embed import join_embeddings


@dataclass(frozen=True, order=True)
class Member:
    """One recogniser run: a registry model version and whether flip fusion is on."""

    version: str
    flip: bool

    def __str__(self) -> str:
        return f"{self.version}@{'flip' if self.flip else 'noflip'}"


@dataclass(frozen=True)
class Variant:
    """An embedding made of one or more members; ``name`` is how it was written."""

    name: str
    members: tuple[Member, ...]

    @classmethod
    def parse(cls, text: str, *, default_flip: bool = True) -> Variant:
        members = []
        for part in text.split("+"):
            version, _, option = part.strip().partition("@")
            if not version or option not in ("", "flip", "noflip"):
                raise ValueError(f"bad variant {text!r}: expected VERSION[@flip|@noflip][+...]")
            members.append(Member(version, default_flip if not option else option == "flip"))
        if len(set(members)) != len(members):
            raise ValueError(f"bad variant {text!r}: a member appears twice")
        return cls(text, tuple(members))

    def compose(self, embeddings: Mapping[Member, np.ndarray]) -> np.ndarray:
        """This variant's unit embedding from its members' unit embeddings."""
        return join_embeddings([embeddings[member] for member in self.members])


def all_members(variants: list[Variant]) -> list[Member]:
    """Every distinct member the variants need, in order of first use."""
    return list(dict.fromkeys(member for variant in variants for member in variant.members))
