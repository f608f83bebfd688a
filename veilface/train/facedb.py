"""Training data: aligned 112x112 face crops in an LMDB, made from a folder of identities.

A source folder holds one sub-folder per identity; every image below it (at any depth, e.g. CFP's
``001/frontal/01.jpg``) is a photo of that identity. :func:`build_lmdb` detects each photo's faces with
the production detector, keeps the main face (as enrollment does), aligns it with the production aligner
and stores the crop as a JPEG together with its five landmarks. Photos without a detected face are
listed in the database's info and left out.

Layout of the database (keys are ASCII):

- ``__info__``: JSON ``{"format", "count", "identities", "missed"}``;
- ``img-{i:08d}``: the crop, JPEG-encoded BGR;
- ``meta-{i:08d}``: JSON ``{"identity", "source", "landmarks", "sha256"}`` (landmarks in pixels of the
  original photo, source relative to the source folder, sha256 of the JPEG bytes).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from veilface.config import Settings
from veilface.face import FaceDetector, align_face, decode_image

#: Changes whenever the crops would: 2 is the least-squares alignment, 3 the main-face rule.
FORMAT = "veilface-faces/3"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Largest database the writer may grow to; LMDB files are sparse, so this costs nothing until used.
_MAP_SIZE = 1 << 40
_JPEG_QUALITY = 95
#: Records written per LMDB transaction (one huge transaction would hold every dirty page in memory).
_RECORDS_PER_TXN = 1000


@dataclass(frozen=True)
class IdentityRange:
    """Identities whose folder name sorts between ``first`` and ``last`` (both included)."""

    first: str
    last: str

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.first <= name <= self.last

    def overlaps(self, other: IdentityRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    @classmethod
    def parse(cls, text: str) -> IdentityRange:
        """Parse ``"001-250"``."""
        first, sep, last = text.partition("-")
        if not sep or not first or not last or first > last:
            raise ValueError(f"expected an identity range FIRST-LAST, got {text!r}")
        return cls(first, last)


@dataclass(frozen=True)
class FaceRecord:
    """One stored crop: whose it is, where it came from, and the five landmarks found on the photo."""

    identity: str
    source: str
    landmarks: np.ndarray
    sha256: str

    @property
    def yaw(self) -> float:
        """See :func:`yaw_ratio`."""
        return yaw_ratio(self.landmarks)


def yaw_ratio(landmarks: np.ndarray) -> float:
    """Signed head yaw estimated from five landmarks: about 0 for a frontal face, about 0.45 in magnitude
    for a CFP profile, positive when the nose points to the image's right.

    It is the sideways offset of the nose tip from the face's midline (the line from the middle of the
    eyes to the middle of the mouth), divided by the length of that midline: the midline keeps its
    length when the head turns, while the nose swings out of it.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes, nose, mouth = points[:2].mean(axis=0), points[2], points[3:].mean(axis=0)
    axis = mouth - eyes
    length = float(np.hypot(*axis))
    if length < 1e-6:
        return 0.0
    offset = nose - eyes
    return float((axis[1] * offset[0] - axis[0] * offset[1]) / length**2)


def list_photos(src: Path, identities: IdentityRange | None = None) -> list[tuple[str, Path]]:
    """``(identity, photo path)`` for every image under ``src``, sorted; identity folders outside
    ``identities`` are skipped."""
    photos = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if identities is not None and folder.name not in identities:
            continue
        photos.extend(
            (folder.name, path)
            for path in sorted(folder.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )
    return photos


def source_digest(src: Path, photos: Sequence[tuple[str, Path]]) -> str:
    """A digest of the photo list (names, sizes, modification times): it changes when any photo does."""
    digest = hashlib.sha256()
    for identity, path in photos:
        stat = path.stat()
        digest.update(f"{identity}\0{path.relative_to(src)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_detector: FaceDetector | None = None


def _init_worker(detector_path: Path) -> None:
    global _detector
    cv2.setNumThreads(1)
    _detector = FaceDetector(detector_path, threads=1)


def _align_one(job: tuple[str, Path, int]) -> tuple[bytes, np.ndarray] | None:
    """Detect, keep the main face, align; ``(jpeg bytes, landmarks)`` or ``None`` without a face."""
    _, path, max_pixels = job
    assert _detector is not None, "worker not initialised"
    img = decode_image(path.read_bytes(), max_pixels=max_pixels)
    detections = _detector.detect(img)
    if not detections:
        return None
    face = detections[0]
    ok, jpeg = cv2.imencode(
        ".jpg", align_face(img, face.landmarks), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    )
    assert ok
    return jpeg.tobytes(), face.landmarks


def build_lmdb(
    src: Path,
    out: Path,
    settings: Settings,
    *,
    identities: IdentityRange | None = None,
    workers: int = 2,
) -> FaceDB:
    """Detect, align and store every photo of ``src`` (one folder per identity) into the LMDB ``out``.

    ``workers`` processes each run the detector on one thread (0: in this process). Returns the database
    opened for reading.
    """
    return _build(src, out, list_photos(src, identities), settings, workers)


def _build(
    src: Path, out: Path, photos: Sequence[tuple[str, Path]], settings: Settings, workers: int
) -> FaceDB:
    if not photos:
        raise ValueError(f"no photos found under {src}")
    out.mkdir(parents=True, exist_ok=True)
    detector_path = settings.shared_models_dir / f"{settings.detector}.onnx"
    jobs = [(identity, path, settings.max_image_pixels) for identity, path in photos]
    missed: list[str] = []
    count = 0
    env = lmdb.open(str(out), map_size=_MAP_SIZE, subdir=True)
    pool = None
    if workers:
        pool = multiprocessing.get_context("spawn").Pool(
            workers, initializer=_init_worker, initargs=(detector_path,)
        )
        results = pool.imap(_align_one, jobs, chunksize=8)
    else:
        _init_worker(detector_path)
        results = map(_align_one, jobs)
    try:
        txn = env.begin(write=True)
        txn.delete(b"__info__")
        for (identity, path), result in tqdm(
            zip(photos, results, strict=True), total=len(jobs), desc="align", mininterval=10
        ):
            source = str(path.relative_to(src))
            if result is None:
                missed.append(source)
                continue
            jpeg, landmarks = result
            meta = {
                "identity": identity,
                "source": source,
                "landmarks": np.round(landmarks, 3).tolist(),
                "sha256": hashlib.sha256(jpeg).hexdigest(),
            }
            txn.put(f"img-{count:08d}".encode(), jpeg)
            txn.put(f"meta-{count:08d}".encode(), json.dumps(meta).encode())
            count += 1
            if count % _RECORDS_PER_TXN == 0:
                txn.commit()
                txn = env.begin(write=True)
        # Written last: a database without it is an interrupted build.
        info = {
            "format": FORMAT,
            "count": count,
            "identities": sorted({identity for identity, _ in photos}),
            "missed": missed,
        }
        txn.put(b"__info__", json.dumps(info).encode())
        txn.commit()
    finally:
        if pool is not None:
            pool.terminate()
        env.close()
    return FaceDB(out)


class FaceDB:
    """Read access to a database written by :func:`build_lmdb`.

    The LMDB environment is opened on the first read. LMDB environments must not cross a ``fork``: call
    :meth:`close` before starting DataLoader worker processes, each of which then opens its own.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with self._open() as env, env.begin() as txn:
            raw = txn.get(b"__info__")
            if raw is None:
                raise ValueError(f"{self.path} is not a face database made by veilface.train.build_lmdb")
            self.info: dict = json.loads(raw)
            if self.info.get("format") != FORMAT:
                raise ValueError(
                    f"{self.path}: format {self.info.get('format')!r}, this version reads {FORMAT!r}"
                    " (crops made by another aligner): rebuild it with python -m veilface.train.build_lmdb"
                )
            self.records: list[FaceRecord] = [
                _record(json.loads(txn.get(f"meta-{i:08d}".encode()))) for i in range(self.info["count"])
            ]
        self._env: lmdb.Environment | None = None

    def _open(self) -> lmdb.Environment:
        return lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, meminit=False)

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        """The crop ``index`` as a BGR uint8 112x112 array."""
        if self._env is None:
            self._env = self._open()
        with self._env.begin() as txn:
            jpeg = txn.get(f"img-{index:08d}".encode())
        return cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        """Close the environment (the next read opens it again)."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def images(self, indices: Iterable[int]) -> Iterator[np.ndarray]:
        """The crops ``indices``, in order."""
        return (self.image(i) for i in indices)

    def select(self, identities: IdentityRange | None) -> list[int]:
        """Indices of the records whose identity is in ``identities`` (all when ``None``)."""
        return [i for i, r in enumerate(self.records) if identities is None or r.identity in identities]

    def digest(self, indices: Sequence[int]) -> str:
        """sha256 over the identity, source and crop digest of the records ``indices``: what a model
        trained on them was trained on."""
        digest = hashlib.sha256()
        for i in indices:
            record = self.records[i]
            digest.update(f"{record.identity}\0{record.source}\0{record.sha256}\n".encode())
        return digest.hexdigest()

    @cached_property
    def yaws(self) -> np.ndarray:
        """:func:`yaw_ratio` of every record."""
        return np.array([r.yaw for r in self.records], dtype=np.float32)


def _record(meta: dict) -> FaceRecord:
    return FaceRecord(
        identity=meta["identity"],
        source=meta["source"],
        landmarks=np.asarray(meta["landmarks"], dtype=np.float32),
        sha256=meta["sha256"],
    )


def cached_lmdb(
    src: Path,
    cache_dir: Path,
    settings: Settings,
    *,
    identities: IdentityRange | None = None,
    workers: int = 2,
) -> FaceDB:
    """The aligned crops of the image folder ``src``, built once into ``cache_dir`` and reused while
    the photos (names, sizes, modification times), the identity range and the detector stay the same."""
    photos = list_photos(src, identities)
    key = hashlib.sha256(
        f"{FORMAT}\0{settings.detector}\0{identities}\0{source_digest(src, photos)}".encode()
    ).hexdigest()[:16]
    path = cache_dir / f"{src.name}-{key}.lmdb"
    if (path / "data.mdb").exists():
        try:
            return FaceDB(path)
        except ValueError:
            pass  # an interrupted build: start again
    return _build(src, path, photos, settings, workers)
