"""Identify latency and bytes moved through the client-key path, on a gallery of enrolled LFW faces.

``python -m veilface.bench.client --gallery 1000 --queries 50 --out results/bench-client.json``
starts the stack as :mod:`veilface.bench.identify` does (MariaDB + Redis when
``VEILFACE_DATABASE_URL`` / ``VEILFACE_BROKER_URL`` are set, else the embedded defaults), makes a
client key set in a temporary folder, creates a client-key gallery under it (``key_set_upload_*``),
enrolls ``--gallery`` LFW photos as as many subjects through
:class:`~veilface.client.gallery.PrivateGallery` (faces analysed and encrypted here, ciphertexts
only uploaded; ``enroll_total_s`` is their wall time), waits for the compactions they queued to
land, makes one untimed identify (``first_identify_s``: the matcher loads the client's key set and
the gallery, after any compaction still queued), then times ``--queries`` identify calls of
held-back photos of enrolled people.

Each identify (the library's :meth:`~veilface.client.gallery.PrivateGallery.identify`, as the
``veilface client identify`` command runs it) is split into the client's local work and the server
round trip: ``detect_embed`` (face analysis), ``encrypt`` (probe encryption), ``round_trip`` (the
search request, from sending its body to having received the answer's body: the server's search
and the transfers) and ``decrypt_rank`` (the rest: decrypting the score ciphertexts, ranking, and
the JSON and base64 of both bodies). ``up_bytes`` / ``down_bytes`` are the request and response
body bytes of each query as the HTTP client sent and received them (the gateway does not compress).
Nothing of a face, template or score is written out: only timings, sizes and counts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from veilface.bench.he import machine_info
from veilface.bench.identify import (
    backends,
    bench_stack,
    gallery_split,
    person_of,
    subject_of,
    wait_for_compaction,
)
from veilface.bench.stats import percentile
from veilface.client.api import GalleryApi
from veilface.client.gallery import Image, PrivateGallery
from veilface.client.keys import ClientKeys, init_keys
from veilface.config import load_settings
from veilface.errors import VeilfaceError
from veilface.local.stack import DEFAULT_MATCHERS

GALLERY = "bench-client"
#: The parts of one identify, in the order the client goes through them.
PARTS = ("detect_embed", "encrypt", "round_trip", "decrypt_rank")


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange: its wall time and the bytes of both bodies."""

    seconds: float
    up_bytes: int
    down_bytes: int


class MeteredSession(requests.Session):
    """A session that records every exchange it sends and keeps the bodies of the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []
        self.last_bodies: tuple[bytes, bytes] = (b"", b"")

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        start = time.perf_counter()
        response = super().send(request, **kwargs)
        body = response.content  # read in full before the clock stops
        seconds = time.perf_counter() - start
        sent = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        self.exchanges.append(Exchange(seconds, len(sent), len(body)))
        self.last_bodies = (sent, body)
        return response


class Stopwatch:
    """``target`` with the wall time of its ``methods``' calls added up in ``seconds``; every other
    attribute passes through unchanged."""

    def __init__(self, target: Any, *methods: str):
        self._target, self._methods, self.seconds = target, methods, 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._methods:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


@dataclass
class Query:
    """The figures of one identify call."""

    total_s: float
    parts_s: dict[str, float]
    up_bytes: int
    down_bytes: int
    top1: str | None
    answer_sizes: dict[str, int] = field(default_factory=dict)


def answer_sizes(request_body: bytes, response_body: bytes) -> dict[str, int]:
    """What one search exchange carried: its number of probes, the first probe ciphertext's bytes,
    the number of score ciphertexts answering that probe and the first one's bytes (all decoded
    from base64)."""
    probes = json.loads(request_body)["probes"]
    scores = json.loads(response_body)["probes"][0]["scores"]
    return {
        "probes": len(probes),
        "probe_ciphertext_bytes": len(base64.b64decode(probes[0])),
        "score_ciphertexts": len(scores),
        "score_ciphertext_bytes": len(base64.b64decode(scores[0]["ciphertext"])) if scores else 0,
    }


def timed_identify(gallery: PrivateGallery, session: MeteredSession, photo: Path) -> Query:
    """Identify ``photo`` through ``gallery`` (whose local faces and public key are stopwatches),
    split into :data:`PARTS`; the top-1 subject of the main face, ``None`` if none."""
    faces, public = gallery.faces, gallery.keys.public
    faces.seconds = public.seconds = 0.0
    before = len(session.exchanges)
    start = time.perf_counter()
    try:
        listed = gallery.identify(Image(photo.read_bytes(), str(photo)))["faces"]
    except VeilfaceError:  # no face: nothing searched
        listed = []
    total = time.perf_counter() - start
    exchanges = session.exchanges[before:]
    round_trip = sum(e.seconds for e in exchanges)
    parts = {"detect_embed": faces.seconds, "encrypt": public.seconds, "round_trip": round_trip}
    parts["decrypt_rank"] = total - sum(parts.values())
    best = listed[0]["candidates"] if listed else []  # identify lists the main face first
    return Query(
        total_s=total,
        parts_s=parts,
        up_bytes=sum(e.up_bytes for e in exchanges),
        down_bytes=sum(e.down_bytes for e in exchanges),
        top1=best[0]["subject"] if best else None,
        answer_sizes=answer_sizes(*session.last_bodies) if exchanges else {},
    )


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    """p50, p95 and mean of ``values`` (not empty), rounded."""
    return {
        "p50": round(statistics.median(values), digits),
        "p95": round(percentile(values, 0.95), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def enroll_all(gallery: PrivateGallery, photos: list[Path], workers: int) -> dict[str, str]:
    """Enroll each photo's main face as its own subject (:func:`subject_of`); the failures by photo."""

    def enroll(photo: Path) -> str | None:
        try:
            gallery.enroll(subject_of(photo), [Image(photo.read_bytes(), str(photo))], main_face=True)
        except VeilfaceError as exc:
            return exc.code
        return None

    with ThreadPoolExecutor(workers) as pool:
        codes = list(tqdm(pool.map(enroll, photos), total=len(photos), desc="enroll"))
    return {str(photo): code for photo, code in zip(photos, codes, strict=True) if code}


def report(queries: list[Query], expected: list[str]) -> dict[str, Any]:
    """The per-query figures of the identify calls: latencies, their parts, bytes and sizes."""
    searched = [q.answer_sizes for q in queries if q.answer_sizes]
    return {
        "queries": len(queries),
        "top1_correct": sum(
            q.top1 is not None and person_of(q.top1) == person_of(name)
            for q, name in zip(queries, expected, strict=True)
        ),
        "identify_s": summary([q.total_s for q in queries]),
        "identify_parts_s": {part: summary([q.parts_s[part] for q in queries], 4) for part in PARTS},
        "local_s": summary([q.total_s - q.parts_s["round_trip"] for q in queries]),
        "up_bytes": summary([q.up_bytes for q in queries], 0),
        "down_bytes": summary([q.down_bytes for q in queries], 0),
        **(
            {
                "probes_per_query": summary([sizes["probes"] for sizes in searched], 2),
                "probe_ciphertext_bytes": searched[0]["probe_ciphertext_bytes"],
                "score_ciphertext_bytes": searched[0]["score_ciphertext_bytes"],
                "score_ciphertexts_per_answer": summary(
                    [sizes["score_ciphertexts"] for sizes in searched], 1
                ),
            }
            if searched
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50, help="0: every identity with two photos")
    parser.add_argument("--workers", type=int, default=2, help="client threads enrolling")
    parser.add_argument("--embedders", type=int, default=1, help="the stack's (idle: the client embeds)")
    parser.add_argument("--matchers", type=int, default=DEFAULT_MATCHERS)
    parser.add_argument("--bind", default="127.0.0.1:8091")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    load_at_start = round(os.getloadavg()[0], 2)
    photos, pairs = gallery_split(settings, args.gallery, args.queries)
    with (
        tempfile.TemporaryDirectory() as keys_dir,
        bench_stack(settings, args.bind, args.embedders, args.matchers) as (stack, key),
    ):
        init_keys(keys_dir)
        keys = ClientKeys.load(keys_dir)
        session = MeteredSession()
        api = GalleryApi(stack.url, key, timeout_s=300, session=session)
        PrivateGallery.create(api, keys, GALLERY, settings)
        upload = session.exchanges[-1]
        gallery = PrivateGallery(api, keys, GALLERY, settings)
        _ = gallery.faces  # the gallery's description and model, loaded before the clocks run

        started = time.perf_counter()
        failures = enroll_all(gallery, photos, args.workers)
        enroll_total_s = time.perf_counter() - started
        delta_templates = wait_for_compaction(settings)

        gallery.faces = Stopwatch(gallery.faces, "faces")
        gallery.keys = ClientKeys(keys.folder, Stopwatch(keys.public, "encrypt", "dumps"), keys.secret)
        # The first search loads the client's key set and the gallery into the matcher, after any
        # compaction still queued there: reported on its own, not among the timed queries.
        first = timed_identify(gallery, session, pairs[0][1])
        queries = [timed_identify(gallery, session, probe) for _, probe in tqdm(pairs, desc="identify")]

    figures = {
        "gallery_templates": len(photos) - len(failures),
        "enroll_failures": failures,
        "enroll_total_s": round(enroll_total_s, 1),
        "key_set_upload_bytes": upload.up_bytes,
        "key_set_upload_s": round(upload.seconds, 3),
        "first_identify_s": round(first.total_s, 3),
        "delta_templates": delta_templates,
        **report(queries, [enrolled.stem for enrolled, _ in pairs]),
        **backends(settings),
        "matchers": args.matchers,
        "client_workers": args.workers,
        "load_avg_at_start": load_at_start,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
