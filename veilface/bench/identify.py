"""Identify latency through HTTP against a real gallery of enrolled LFW (and CFP) faces.

``python -m veilface.bench.identify --gallery 1000 --queries 50 --out FILE.json`` starts the
stack (MariaDB + Redis when ``VEILFACE_DATABASE_URL`` / ``VEILFACE_BROKER_URL`` are set,
else the embedded defaults), enrolls ``--gallery`` photos over HTTP (each its own subject, so
every template is searched; LFW, then CFP past about 3,000: :func:`gallery_split`;
``enroll_total_s`` is their wall time, ``enroll_p50_s`` the median request), waits for the
compactions they queued to land, makes one untimed identify (``first_identify_s``: the matcher
loads the gallery's blocks from the database at its first search), then times ``--queries``
identify requests with held-back photos of enrolled people, then ``--queries`` subject verify
requests of the same photos against their enrolled subject (``verify_*`` fields; ``verify_matched``
counts the answers ``"match": true``).

With ``--plaintext`` the bench also runs the plaintext pipeline in its own process (the active model,
the main face of each photo, cosine similarity, no encryption) on the same gallery and queries, and
counts the queries whose HTTP top-1 differs from the plaintext top-1. Those plaintext embeddings only
live in this process's memory. ``--queries 0`` searches one held-back photo of every LFW identity
with two photos or more (1,559 in the shared LFW copy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
from sqlalchemy import func, select
from tqdm import tqdm

from veilface.bench.stats import percentile
from veilface.config import Settings, load_settings
from veilface.face.pipeline import FacePipeline
from veilface.local.stack import DEFAULT_MATCHERS, STOP_SIGNALS, Stack, raise_stop
from veilface.models.registry import ModelRegistry
from veilface.store.db import make_engine
from veilface.store.models import Template


def _photos(lfw: Path) -> list[list[Path]]:
    return [sorted(p.glob("*.jpg")) for p in sorted(lfw.iterdir()) if p.is_dir()]


def subject_of(photo: Path) -> str:
    """The subject a bench photo is enrolled as, one per photo: an LFW photo's stem
    (``Aaron_Peirsol_0001``), or ``cfp_<id>_<pose>_<n>`` for a CFP photo."""
    if len(photo.parents) > 3 and photo.parents[3].name == "cfp":  # cfp/images/<id>/<pose>/<n>.jpg
        return f"cfp_{photo.parent.parent.name}_{photo.parent.name}_{photo.stem}"
    return photo.stem


def person_of(subject: str) -> str:
    """The person a bench subject (:func:`subject_of`) shows: ``Aaron_Peirsol``, ``cfp_001``."""
    return "_".join(subject.split("_")[:2]) if subject.startswith("cfp_") else subject.rsplit("_", 1)[0]


def gallery_split(
    settings: Settings, gallery: int, queries: int
) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """The photos to enroll (``gallery`` of them, each its own subject: :func:`subject_of`) and the
    ``queries`` pairs (enrolled photo, held-back photo of the same person); ``queries`` 0: every
    LFW identity with two photos or more.

    The gallery starts with the enrolled photo of every query, then the LFW people with one photo
    (about 3,000); a larger one goes on with the other photos of the LFW people with several (the
    held-back photos left out), then the frontal and profile photos of CFP: several photos of many
    people, so a query is right when its top-1 is any photo of its person (:func:`person_of`).
    """
    people = _photos(settings.data_dir / "lfw" / "images")
    pairs = [(p[0], p[1]) for p in people if len(p) >= 2][: queries or None]
    first, held_back = [q[0] for q in pairs], {q[1] for q in pairs}
    singles = [p[0] for p in people if len(p) == 1]
    several = [photo for p in people if len(p) >= 2 for photo in p if photo not in held_back]
    cfp = sorted((settings.data_dir / "cfp" / "images").glob("*/*/*.jpg"))
    rest = [photo for photo in singles + several + cfp if photo not in set(first)]
    return (first + rest)[:gallery], pairs


@contextmanager
def bench_stack(settings: Settings, bind: str, embedders: int, matchers: int) -> Iterator[tuple[Stack, str]]:
    """The stack started and ready (on the backends ``settings`` name), with a fresh admin API key;
    stopped on exit, also when the bench is stopped by SIGTERM, SIGINT or SIGHUP."""
    key = secrets.token_urlsafe(24)
    stack = Stack(bind=bind, embedders=embedders, matchers=matchers, log_dir=settings.var_dir / "logs")
    stack.env["VEILFACE_BOOTSTRAP_API_KEY"] = key
    handlers = {signum: signal.signal(signum, raise_stop) for signum in STOP_SIGNALS}
    try:
        stack.start()
        stack.wait_ready()
        yield stack, key
    finally:
        for signum in STOP_SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def backends(settings: Settings) -> dict[str, str]:
    """The database and broker the stack ran on, by scheme (``sqlite`` for the embedded defaults)."""
    return {
        "database": "sqlite" if not settings.database_url else settings.database_url.split(":")[0],
        "broker": "sqlite" if not settings.broker_url else settings.broker_url.split(":")[0],
    }


def plaintext_top1(settings: Settings, gallery: list[Path], probes: list[Path]) -> list[str | None]:
    """Top-1 subject (photo stem) of each probe by plaintext cosine similarity, as enrollment and
    identify pick faces (the main face); ``None`` when the probe has no face."""
    pipeline = FacePipeline.from_model(settings, ModelRegistry(settings).active())

    def embed(photo: Path) -> np.ndarray | None:
        faces = pipeline.analyze(photo.read_bytes())
        return faces[0].embedding if faces else None

    enrolled = [
        (subject_of(photo), e)
        for photo in tqdm(gallery, desc="plaintext gallery")
        if (e := embed(photo)) is not None
    ]
    names, matrix = [name for name, _ in enrolled], np.stack([e for _, e in enrolled])
    best = []
    for probe in tqdm(probes, desc="plaintext probes"):
        e = embed(probe)
        best.append(None if e is None else names[int(np.argmax(matrix @ e))])
    return best


def _timed_post(url: str, headers: dict[str, str], photo: Path) -> tuple[requests.Response, float]:
    """POST ``photo`` as the ``image`` field; the response and its wall time in seconds."""
    start = time.perf_counter()
    r = requests.post(url, headers=headers, files=[("image", photo.read_bytes())], timeout=300)
    return r, time.perf_counter() - start


def wait_for_compaction(settings: Settings, timeout_s: float = 600.0) -> int:
    """Wait until the delta is below the compaction threshold, i.e. the compactions queued by the
    enrollments have landed, and return how many templates are left in the delta (they stay
    there until more enrollments come, and each query scores them apart from the blocks)."""
    engine = make_engine(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                pending = conn.scalar(select(func.count()).where(Template.state == "delta"))
            if pending < settings.compaction_threshold:
                return pending
            time.sleep(1)
    finally:
        engine.dispose()
    raise TimeoutError(f"the delta still held {pending} templates after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50, help="0: every identity with two photos")
    parser.add_argument("--embedders", type=int, default=2)
    parser.add_argument("--matchers", type=int, default=DEFAULT_MATCHERS)
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--plaintext", action="store_true", help="compare top-1 with the plaintext pipeline")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    gallery, queries = gallery_split(settings, args.gallery, args.queries)

    with bench_stack(settings, args.bind, args.embedders, args.matchers) as (stack, key):
        headers = {"X-API-Key": key}

        def enroll(photo: Path) -> tuple[int, float]:
            start = time.perf_counter()
            r = requests.post(
                f"{stack.url}/v1/galleries/bench/subjects/{subject_of(photo)}/faces",
                headers=headers,
                files=[("image", photo.read_bytes())],
                params={"face": "main"},
                timeout=300,
            )
            return r.status_code, time.perf_counter() - start

        started = time.perf_counter()
        with ThreadPoolExecutor(args.embedders * 2) as pool:
            timed = list(tqdm(pool.map(enroll, gallery), total=len(gallery), desc="enroll"))
        enroll_total_s = time.perf_counter() - started
        codes = [code for code, _ in timed]
        enrolled = [photo for photo, code in zip(gallery, codes, strict=True) if code == 201]
        failures = {str(photo): code for photo, code in zip(gallery, codes, strict=True) if code != 201}
        delta_templates = wait_for_compaction(settings)
        _, first_identify_s = _timed_post(f"{stack.url}/v1/galleries/bench/identify", headers, queries[0][1])
        latencies, correct, answers = [], 0, []
        for enrolled_photo, probe in tqdm(queries, desc="identify"):
            r, seconds = _timed_post(f"{stack.url}/v1/galleries/bench/identify", headers, probe)
            latencies.append(seconds)
            faces = r.json().get("faces", []) if r.ok else []
            best = faces[0] if faces else None  # identify lists the main face first
            answers.append(best["candidates"][0]["subject"] if best and best["candidates"] else None)
            correct += answers[-1] is not None and person_of(answers[-1]) == person_of(enrolled_photo.stem)
        verify_latencies, verified = [], 0
        for enrolled_photo, probe in tqdm(queries, desc="verify"):
            url = f"{stack.url}/v1/galleries/bench/subjects/{subject_of(enrolled_photo)}/verify"
            r, seconds = _timed_post(url, headers, probe)
            verify_latencies.append(seconds)
            verified += r.ok and r.json().get("match") is True
    plaintext = {}
    if args.plaintext:
        expected = plaintext_top1(settings, enrolled, [probe for _, probe in queries])
        differ = [str(probe) for (_, probe), a, b in zip(queries, answers, expected, strict=True) if a != b]
        plaintext = {
            "plaintext_top1_correct": sum(
                e is not None and person_of(e) == person_of(q.stem)
                for (q, _), e in zip(queries, expected, strict=True)
            ),
            "top1_differs_from_plaintext": len(differ),
            "differing_queries": differ,
        }

    report = {
        "gallery_templates": len(enrolled),
        "enroll_failures": failures,
        "enroll_total_s": round(enroll_total_s, 1),
        "enroll_p50_s": round(statistics.median(seconds for _, seconds in timed), 3),
        "queries": len(queries),
        "top1_correct": correct,
        "first_identify_s": round(first_identify_s, 3),
        "delta_templates": delta_templates,
        **plaintext,
        "identify_p50_s": round(statistics.median(latencies), 3),
        "identify_p95_s": round(percentile(latencies, 0.95), 3),
        "identify_mean_s": round(statistics.fmean(latencies), 3),
        "verify_matched": verified,
        "verify_p50_s": round(statistics.median(verify_latencies), 3),
        "verify_p95_s": round(percentile(verify_latencies, 0.95), 3),
        "verify_mean_s": round(statistics.fmean(verify_latencies), 3),
        **backends(settings),
        "embedders": args.embedders,
        "matchers": args.matchers,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
