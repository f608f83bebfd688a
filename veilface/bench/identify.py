"""Identify latency through HTTP against a real gallery of enrolled LFW faces.

``python -m veilface.bench.identify --gallery 1000 --queries 50 --out FILE.json`` starts the
stack (MariaDB + Redis when ``VEILFACE_DATABASE_URL`` / ``VEILFACE_BROKER_URL`` are set,
else the embedded defaults), enrolls ``--gallery`` LFW photos over HTTP (each its own
subject, so every template is searched), waits for compaction, then times ``--queries``
identify requests with held-back photos of enrolled people.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tqdm import tqdm

from veilface.config import load_settings
from veilface.demo import percentile
from veilface.stack import Stack


def _photos(lfw: Path) -> list[list[Path]]:
    return [sorted(p.glob("*.jpg")) for p in sorted(lfw.iterdir()) if p.is_dir()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--embedders", type=int, default=2)
    parser.add_argument("--matchers", type=int, default=1)
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    people = _photos(settings.data_dir / "lfw" / "images")
    queries = [(p[0], p[1]) for p in people if len(p) >= 2][: args.queries]
    query_names = {q[0] for q in queries}
    others = [photo for p in people for photo in p if photo not in query_names and len(p) == 1]
    gallery = [q[0] for q in queries] + others[: args.gallery - len(queries)]

    key = secrets.token_urlsafe(24)
    headers = {"X-API-Key": key}
    stack = Stack(
        bind=args.bind, embedders=args.embedders, matchers=args.matchers, log_dir=settings.var_dir / "logs"
    )
    stack.env["VEILFACE_BOOTSTRAP_API_KEY"] = key
    stack.start()
    try:
        stack.wait_ready()

        def enroll(photo: Path) -> int:
            r = requests.post(
                f"{stack.url}/v1/galleries/bench/subjects/{photo.stem}/faces",
                headers=headers,
                files=[("image", photo.read_bytes())],
                params={"face": "largest"},
                timeout=300,
            )
            return r.status_code

        with ThreadPoolExecutor(args.embedders * 2) as pool:
            codes = list(tqdm(pool.map(enroll, gallery), total=len(gallery), desc="enroll"))
        enrolled = codes.count(201)
        time.sleep(5)  # let the last compaction land
        latencies, correct = [], 0
        for enrolled_photo, probe in tqdm(queries, desc="identify"):
            start = time.perf_counter()
            r = requests.post(
                f"{stack.url}/v1/galleries/bench/identify",
                headers=headers,
                files=[("image", probe.read_bytes())],
                timeout=300,
            )
            latencies.append(time.perf_counter() - start)
            faces = r.json().get("faces", []) if r.ok else []
            best = max(faces, key=lambda f: f["box"][2] * f["box"][3]) if faces else None
            correct += (
                bool(best and best["candidates"]) and best["candidates"][0]["subject"] == enrolled_photo.stem
            )
    finally:
        stack.stop()

    report = {
        "gallery_templates": enrolled,
        "enroll_failures": len(gallery) - enrolled,
        "queries": len(queries),
        "top1_correct": correct,
        "identify_p50_s": round(statistics.median(latencies), 3),
        "identify_p95_s": round(percentile(latencies, 0.95), 3),
        "identify_mean_s": round(statistics.fmean(latencies), 3),
        "database": "sqlite" if not settings.database_url else settings.database_url.split(":")[0],
        "broker": "sqlite" if not settings.broker_url else settings.broker_url.split(":")[0],
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
