"""``python -m veilface.train --data DIR --config FILE``: run one experiment (see ``docs/training.md``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from veilface.config import load_settings
from veilface.train.config import load_config
from veilface.train.trainer import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m veilface.train", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="data set folder (see the config's [data])")
    parser.add_argument("--config", type=Path, required=True, help="experiment TOML file")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: {var}/train/{name})")
    parser.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    parser.add_argument("--no-register", action="store_true", help="export and check, but do not register")
    parser.add_argument(
        "--stop-after", type=int, default=None, metavar="N", help="train at most N epochs now (then --resume)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    config = load_config(args.config)
    out = args.out or settings.var_dir / "train" / config.name
    result = run(
        config,
        args.data,
        out,
        settings,
        resume=args.resume,
        register_model=not args.no_register,
        stop_after=args.stop_after,
    )
    if "stopped_after_epoch" in result:
        print(
            json.dumps(
                {"name": config.name, "stopped_after_epoch": result["stopped_after_epoch"], "out": str(out)}
            )
        )
        return
    summary = {
        key: result.get(key) for key in ("name", "version", "model_file", "parity_max_abs_diff", "dev")
    }
    print(json.dumps({**summary, "pose": result.get("pose", {}).get("kept"), "out": str(out)}, indent=2))


if __name__ == "__main__":
    main()
