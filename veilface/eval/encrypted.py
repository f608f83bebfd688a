"""1:1 scores computed under CKKS encryption, exactly as a deployment computes them.

For each pair the first embedding is encrypted as a probe and the second as a template (slot 0), as
the embedder does for the two photos of a comparison; the matcher's kernel scores them
(:func:`veilface.search.pair.score_pair`) and the secret key decrypts the score the way the gateway does
(``veilface/api/gateway.py::_pair_similarity``, rounded to 6 decimals). Everything runs in-process with
a fresh key set generated in a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from collections.abc import Sequence
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from veilface.crypto.params import DEFAULT_PARAMS, CkksParams
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.search import ranking
from veilface.search.pair import score_pair
from veilface.search.results import ScoreResult


def decrypt_similarity(keys: SecretContext, result: ScoreResult) -> float:
    """The gateway's reading of a 1:1 score (:func:`score_pair`): slot 0's, rounded to 6 decimals."""
    ((_, similarity),) = ranking.top_k(
        [(result, keys.decrypt_scores(result.ciphertext, result.source))], {(0, 0): "pair"}, 1, keys.slots
    )
    return round(similarity, 6)


class EncryptedPairScorer:
    """Scores embedding pairs under encryption in worker processes sharing one fresh key set.

    Use as a context manager. ``dim`` is the embedding length; key sets for dimensions above the
    deployment's ``max_dim`` get Galois keys up to ``dim`` (any power of two up to the slot count).
    """

    def __init__(self, dim: int, *, processes: int = 2):
        self.dim = dim
        self.params = CkksParams(max_dim=max(DEFAULT_PARAMS.max_dim, dim))
        self.params.check_dim(dim)
        self._processes = processes
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._pool: Pool | None = None

    def __enter__(self) -> EncryptedPairScorer:
        self._tmp = tempfile.TemporaryDirectory(prefix="veilface-eval-keys-")
        generate_keyset(self._tmp.name, self.params)
        self._pool = mp.get_context("spawn").Pool(
            self._processes, initializer=_init_worker, initargs=(Path(self._tmp.name),)
        )
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._pool is not None and self._tmp is not None
        self._pool.terminate()
        self._pool.join()
        self._tmp.cleanup()
        self._pool = self._tmp = None

    def score(
        self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], desc: str = "encrypted pairs"
    ) -> np.ndarray:
        """Decrypted similarity of each ``(probe, template)`` pair of unit embeddings."""
        if self._pool is None:
            raise RuntimeError("use EncryptedPairScorer as a context manager")
        results = self._pool.imap(_score, pairs, chunksize=8)
        return np.fromiter(tqdm(results, total=len(pairs), desc=desc, mininterval=60), dtype=np.float64)


_public: PublicContext | None = None
_secret: SecretContext | None = None


def _init_worker(key_dir: Path) -> None:
    global _public, _secret
    _public = PublicContext.load(key_dir / "public.ctx")
    _secret = SecretContext.load(key_dir / "secret.ctx")
    _secret.check_fingerprint(_public.fingerprint)


def _score(pair: tuple[np.ndarray, np.ndarray]) -> float:
    assert _public is not None and _secret is not None
    probe, template = pair
    result = score_pair(_public, encrypt_probe(_public, probe), encrypt_template(_public, template, 0))
    return decrypt_similarity(_secret, result)
