"""Throughput of the face pipeline, end to end and per stage, on LFW photos.

``python -m veilface.bench.embedder --n 200 --out results/embedder.json [--processes 2]``

Every process runs one pipeline with one thread (ONNX Runtime and OpenCV), as a worker does; the
processes start together after a warm-up, and throughput is counted over the slowest one. Stage
times are per image: decode (bytes to pixels), detect, quality, align, embed (all faces in one batch).
Wall and CPU time are both reported: on a machine shared with other jobs the CPU time (of the
process, all threads) still says what a dedicated core would do.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from veilface.config import Settings, load_settings
from veilface.face.align import align_face
from veilface.face.image import decode_image
from veilface.face.pipeline import FacePipeline
from veilface.face.quality import assess

STAGES = ("decode", "detect", "quality", "align", "embed")
WARMUP_IMAGES = 3


def lfw_images(settings: Settings, n: int) -> list[Path]:
    """``n`` LFW photos spread evenly over the sorted list, so that many identities are covered."""
    paths = sorted((settings.data_dir / "lfw" / "images").glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {settings.data_dir / 'lfw' / 'images'}")
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def timed_analyze(pipeline: FacePipeline, data: bytes) -> tuple[int, np.ndarray]:
    """Run the stages of :meth:`FacePipeline.analyze` on one upload.

    Returns the faces found and a ``(len(STAGES), 2)`` array of (wall, CPU) seconds per stage.
    """
    marks = [_clocks()]
    img = decode_image(data, max_pixels=pipeline.max_image_pixels)
    marks.append(_clocks())
    detections = pipeline.detector.detect(img)
    marks.append(_clocks())
    for detection in detections:
        assess(img, detection)
    marks.append(_clocks())
    crops = [align_face(img, detection.landmarks) for detection in detections]
    marks.append(_clocks())
    pipeline.recognizer.embed(crops)
    marks.append(_clocks())
    return len(detections), np.diff(np.array(marks), axis=0)


def run_shard(job: tuple[Settings, list[Path], object]) -> dict:
    """Worker: build a one-thread pipeline, warm up, wait for the others, time the shard."""
    settings, paths, barrier = job
    cv2.setNumThreads(1)
    pipeline = FacePipeline.from_settings(settings)
    uploads = [path.read_bytes() for path in paths]
    for data in uploads[:WARMUP_IMAGES]:
        timed_analyze(pipeline, data)
    barrier.wait()
    start = time.perf_counter()
    results = [timed_analyze(pipeline, data) for data in uploads]
    return {
        "seconds": time.perf_counter() - start,
        "faces": sum(faces for faces, _ in results),
        "stages": np.stack([stages for _, stages in results]),
        "providers": pipeline.providers,
    }


def machine_info(providers: dict[str, str]) -> dict:
    """What the numbers depend on: CPU, load, library versions, execution providers."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "providers": providers,
    }


def benchmark(settings: Settings, n: int, processes: int) -> dict:
    """Time ``n`` LFW images split over ``processes`` one-thread workers; return the report."""
    settings = replace(settings, onnx_threads=1)
    paths = lfw_images(settings, n)
    shards = [paths[i::processes] for i in range(processes)]
    load_before = os.getloadavg()[0]
    with mp.Manager() as manager, mp.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        shard_reports = pool.map(run_shard, [(settings, shard, barrier) for shard in shards], chunksize=1)
    wall = max(report["seconds"] for report in shard_reports)
    faces = sum(report["faces"] for report in shard_reports)
    per_image = np.concatenate([report["stages"] for report in shard_reports])  # (images, stages, 2)
    wall_ms, cpu_ms = (1000 * per_image.mean(axis=0)).T
    cpu_seconds_per_face = per_image[:, :, 1].sum() / faces
    machine = machine_info(shard_reports[0]["providers"])
    machine["load_average_1m_before"] = round(load_before, 2)
    return {
        "images": len(paths),
        "faces": faces,
        "processes": processes,
        "threads_per_process": 1,
        "recognizer": settings.recognizer,
        "detector": settings.detector,
        "flip_fusion": settings.flip_fusion,
        "wall_seconds": round(wall, 2),
        "images_per_second": round(len(paths) / wall, 2),
        "faces_per_second": round(faces / wall, 2),
        "faces_per_second_per_process": round(faces / wall / processes, 2),
        "faces_per_cpu_second": round(1 / cpu_seconds_per_face, 2),
        "stage_wall_ms_per_image": dict(zip(STAGES, wall_ms.round(2).tolist(), strict=True)),
        "stage_cpu_ms_per_image": dict(zip(STAGES, cpu_ms.round(2).tolist(), strict=True)),
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="LFW images to process")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="one-thread workers")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = benchmark(load_settings(), args.n, args.processes)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
