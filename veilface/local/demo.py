"""``make demo``: start the stack on embedded defaults, enroll, identify held-back photos.

Takes identities from ``{shared_dir}/data/lfw/images`` (or ``--data DIR`` with one folder
per identity), enrolls the first photo of each over HTTP, identifies another photo of
each, and prints the top-1 result and the latency of every request.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from pathlib import Path

import requests

from veilface.bench.stats import percentile
from veilface.config import load_settings
from veilface.local.stack import Stack

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def identities(folder: Path, count: int) -> list[list[Path]]:
    """The first ``count`` identity folders holding at least two photos."""
    people = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 2:
            people.append(photos)
        if len(people) == count:
            break
    return people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with one sub-folder per identity")
    parser.add_argument("--identities", type=int, default=10)
    parser.add_argument("--bind", default="127.0.0.1:8080")
    args = parser.parse_args()

    settings = load_settings()
    folder = args.data or settings.data_dir / "lfw" / "images"
    people = identities(folder, args.identities)
    if not people:
        raise SystemExit(f"no identity with two or more photos under {folder}")
    key = secrets.token_urlsafe(24)
    stack = Stack(bind=args.bind, log_dir=settings.var_dir / "logs")
    stack.env["VEILFACE_BOOTSTRAP_API_KEY"] = key
    headers = {"X-API-Key": key}
    print(f"starting gateway, embedder and he-matcher (embedded defaults under {settings.var_dir}) ...")
    stack.start()
    try:
        stack.wait_ready()
        enroll_ms, identify_ms, correct = [], [], 0
        for photos in people:
            name = photos[0].parent.name
            start = time.perf_counter()
            r = requests.post(
                f"{stack.url}/v1/galleries/demo/subjects/{name}/faces",
                headers=headers,
                files=[("image", photos[0].read_bytes())],
                params={"face": "main"},
                timeout=120,
            )
            enroll_ms.append((time.perf_counter() - start) * 1000)
            print(f"enrolled {name:<30} {r.status_code} {enroll_ms[-1]:7.0f} ms")
        for photos in people:
            name = photos[0].parent.name
            start = time.perf_counter()
            r = requests.post(
                f"{stack.url}/v1/galleries/demo/identify",
                headers=headers,
                files=[("image", photos[1].read_bytes())],
                timeout=120,
            )
            identify_ms.append((time.perf_counter() - start) * 1000)
            faces = r.json().get("faces", []) if r.ok else []
            best = max(faces, key=lambda f: f["box"][2] * f["box"][3]) if faces else None
            top = (
                best["candidates"][0] if best and best["candidates"] else {"subject": "-", "similarity": 0.0}
            )
            ok = top["subject"] == name
            correct += ok
            print(
                f"identify {photos[1].name:<34} -> {top['subject']:<30} {top['similarity']:+.3f} "
                f"{'ok' if ok else 'WRONG'} {identify_ms[-1]:7.0f} ms"
            )
        print(f"\ntop-1 correct: {correct}/{len(people)}")
        for label, values in (("enroll", enroll_ms), ("identify", identify_ms)):
            p50, p95 = statistics.median(values), percentile(values, 0.95)
            print(f"{label} latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
