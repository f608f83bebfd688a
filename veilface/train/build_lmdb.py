"""``python -m veilface.train.build_lmdb --src DIR --out DB``: align a folder of identities into an LMDB.

``DIR`` holds one sub-folder per identity (CASIA-WebFace, a CFP or LFW ``images`` folder, your own
photos); see :mod:`veilface.train.facedb` for the database layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from veilface.config import load_settings
from veilface.train.facedb import IdentityRange, build_lmdb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m veilface.train.build_lmdb", description=__doc__)
    parser.add_argument("--src", type=Path, required=True, help="folder with one sub-folder per identity")
    parser.add_argument("--out", type=Path, required=True, help="LMDB folder to write")
    parser.add_argument(
        "--identities", type=IdentityRange.parse, default=None, help="only identities FIRST-LAST (by name)"
    )
    parser.add_argument("--workers", type=int, default=2, help="detector processes (one thread each)")
    args = parser.parse_args(argv)
    db = build_lmdb(args.src, args.out, load_settings(), identities=args.identities, workers=args.workers)
    summary = {"out": str(db.path), "faces": len(db), "identities": len(db.info["identities"])}
    print(json.dumps({**summary, "photos_without_face": len(db.info["missed"])}))


if __name__ == "__main__":
    main()
