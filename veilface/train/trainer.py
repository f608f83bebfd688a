"""The training run: data, backbone and margin head, epochs with validation, pose mapping, export.

:func:`run` does a whole experiment and is what ``python -m veilface.train`` calls. Everything it writes
goes to its output folder: ``checkpoint.pt`` after every epoch (``--resume`` continues from it),
``curves.png``, ``backbone.pt``, ``model.onnx`` and ``result.json``; the model is then registered (see
:mod:`veilface.train.export`).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from veilface.config import Settings
from veilface.train.backbones import create_backbone
from veilface.train.config import DataConfig, TrainConfig
from veilface.train.curves import plot_curves
from veilface.train.dataset import FaceDataset, to_tensor
from veilface.train.export import export_onnx, exported_network, parity, production_embeddings, register
from veilface.train.facedb import FaceDB, IdentityRange, cached_lmdb
from veilface.train.losses import MarginHead
from veilface.train.pose import DreamMapping, fit_dream
from veilface.train.validation import DevPairs, dev_metrics

#: At most this many dev faces are compared pairwise (about 8 million pairs).
_DEV_MAX_FACES = 4000


class ParityError(RuntimeError):
    """The ONNX graph does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Split:
    """Some faces of a database: record ``indices`` and the identity of each."""

    db: FaceDB
    indices: list[int]

    @property
    def identities(self) -> list[str]:
        return [self.db.records[i].identity for i in self.indices]

    @property
    def yaws(self) -> np.ndarray:
        return self.db.yaws[self.indices]

    def crops(self, count: int | None = None) -> np.ndarray:
        """The first ``count`` crops (all when ``None``), BGR uint8 ``(n, 112, 112, 3)``."""
        return np.stack(list(self.db.images(self.indices[:count])))


class EmbeddingModel(nn.Module):
    """What is exported: the backbone's L2-normalised embedding, then the pose mapping if any."""

    def __init__(self, backbone: nn.Module, pose: DreamMapping | None = None):
        super().__init__()
        self.backbone = backbone
        self.pose = pose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeddings = F.normalize(self.backbone(x).float(), dim=1)
        return embeddings if self.pose is None else self.pose(embeddings)


def load_data(
    config: DataConfig, data_dir: Path, settings: Settings, *, seed: int
) -> tuple[Split, Split | None]:
    """The training and dev faces the data config names; image folders are aligned and cached first."""
    root = data_dir / config.root if config.root else data_dir
    train_range = IdentityRange.parse(config.train) if config.train else None
    dev_range = IdentityRange.parse(config.dev) if config.dev else None
    if train_range and dev_range and train_range.overlaps(dev_range):
        raise ValueError(f"train identities {config.train} and dev identities {config.dev} overlap")
    if config.layout == "lmdb":
        train_db = dev_db = FaceDB(root)
    else:
        cache = settings.var_dir / "train-cache"
        train_db = cached_lmdb(root, cache, settings, identities=train_range, workers=config.workers)
        dev_db = (
            cached_lmdb(root, cache, settings, identities=dev_range, workers=config.workers)
            if dev_range
            else None
        )
    train = [
        i
        for i in train_db.select(train_range)
        if dev_range is None or train_db.records[i].identity not in dev_range
    ]
    if not train:
        raise ValueError(f"no training faces under {root} for identities {config.train or 'all'}")
    dev = None
    if dev_db is not None:
        indices = dev_db.select(dev_range)
        if len(indices) > _DEV_MAX_FACES:
            indices = sorted(
                np.random.default_rng(seed).choice(indices, _DEV_MAX_FACES, replace=False).tolist()
            )
        dev = Split(dev_db, indices)
    return Split(train_db, train), dev


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def embed(
    model: nn.Module, split: Split, *, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of every face of ``split`` and of its mirror image (kept in memory only)."""
    model.eval()
    plain, mirrored = [], []
    for chunk in _batches(split.indices, batch_size):
        x = to_tensor(np.stack(list(split.db.images(chunk)))).to(device)
        plain.append(model(x).float().cpu())
        mirrored.append(model(x.flip(3)).float().cpu())
    return torch.cat(plain).numpy(), torch.cat(mirrored).numpy()


def fuse(plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Flip fusion as the embedder does it: the normalised sum of both views."""
    total = plain + mirrored
    return total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _weights_path(weights: str, settings: Settings) -> Path | None:
    if not weights:
        return None
    path = Path(weights)
    return path if path.is_absolute() or path.exists() else settings.shared_models_dir / path


def _class_centres(
    model: nn.Module,
    split: Split,
    labels: np.ndarray,
    classes: int,
    *,
    frontal_yaw: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean flip-fused unit embedding of each class over all its faces and over its frontal faces only
    (zero for a class without frontal face)."""
    embeddings = torch.from_numpy(fuse(*embed(model, split, batch_size=128, device=device)))
    index = torch.from_numpy(labels)
    frontal = torch.from_numpy(np.abs(split.yaws) <= frontal_yaw)
    centres = torch.zeros(classes, embeddings.shape[1]).index_add_(0, index, embeddings)
    frontal_centres = torch.zeros_like(centres).index_add_(0, index[frontal], embeddings[frontal])
    return F.normalize(centres, dim=1), F.normalize(frontal_centres, dim=1)


def _anchor_loss(embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance of each embedding to its class's anchor (classes without one are skipped)."""
    targets = anchors[labels]
    present = targets.norm(dim=1) > 0
    cosines = (F.normalize(embeddings.float(), dim=1) * targets).sum(dim=1)
    return (1.0 - cosines)[present].mean() if bool(present.any()) else cosines.sum() * 0.0


class Validator:
    """Dev metrics of a model: embeds the dev faces (both views) and keeps the latest views."""

    def __init__(self, split: Split, config: TrainConfig):
        self.split = split
        self.pairs = DevPairs.build(
            split.identities,
            split.yaws,
            frontal_yaw=config.pose.frontal_yaw,
            profile_yaw=config.pose.profile_yaw,
        )
        self.target_fmr, self.seed = config.export.target_fmr, config.seed
        self.views: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, model: nn.Module, device: torch.device) -> dict:
        self.views = embed(model, self.split, batch_size=128, device=device)
        return self.metrics(fuse(*self.views))

    def metrics(self, embeddings: np.ndarray) -> dict:
        """:func:`~veilface.train.validation.dev_metrics` of unit embeddings of the dev faces."""
        return dev_metrics(embeddings, self.pairs, target_fmr=self.target_fmr, seed=self.seed)


def _optimizer(config: TrainConfig, backbone: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.optim.lr},
        {"params": head.parameters(), "lr": config.optim.head_lr},
    ]
    if config.optim.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=config.optim.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)


def _freeze(backbone: nn.Module, config: TrainConfig) -> None:
    frozen = [p for name, p in backbone.named_parameters() if name.startswith(config.model.freeze)]
    if config.model.freeze and not frozen:
        raise ValueError(
            f"model.freeze {config.model.freeze} matches no parameter of {config.model.backbone}"
        )
    for parameter in frozen:
        parameter.requires_grad_(False)


def run(
    config: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    settings: Settings,
    *,
    resume: bool = False,
    register_model: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train, validate, add the pose mapping if it helps, export, check and register; returns the result
    (also written to ``out_dir/result.json``).

    With ``stop_after``, at most that many epochs are trained in this call: if the run is not finished
    then, the result only holds ``history`` and ``stopped_after_epoch``, and ``resume=True`` continues.
    """
    torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = config.optim.amp and device.type == "cuda"
    if (config.pose.method != "none" or register_model) and not config.data.dev:
        raise ValueError("the pose mapping and the registered threshold need dev identities: set data.dev")
    out_dir.mkdir(parents=True, exist_ok=True)

    train_split, dev_split = load_data(config.data, data_dir, settings, seed=config.seed)
    validator = Validator(dev_split, config) if dev_split is not None else None
    classes = sorted(set(train_split.identities))
    labels = np.array([classes.index(i) for i in train_split.identities], dtype=np.int64)
    backbone = create_backbone(
        config.model.backbone,
        embedding_dim=config.model.embedding_dim,
        weights=_weights_path(config.model.weights, settings),
    ).to(device)
    _freeze(backbone, config)
    model = EmbeddingModel(backbone)
    head = MarginHead(
        config.model.embedding_dim,
        len(classes),
        kind=config.loss.head,
        scale=config.loss.scale,
        margin=config.loss.margin,
    ).to(device)
    dataset = FaceDataset(train_split.db, train_split.indices, labels, config.augment, seed=config.seed)
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=min(config.optim.batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        num_workers=config.data.workers,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    optimizer = _optimizer(config, backbone, head)
    total_steps = config.optim.epochs * len(loader)
    warmup = round(config.optim.warmup_epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup, total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    checkpoint_path = out_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 0
    anchors = torch.zeros(len(classes), config.model.embedding_dim)
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["config"] != config.to_dict():
            raise ValueError(f"{checkpoint_path} was made with another config; start a new output folder")
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch, anchors = state["history"], state["epoch"], state["anchors"]
    else:
        if config.loss.init_from_embeddings or config.pose.anchor_weight:
            centres, anchors = _class_centres(
                model, train_split, labels, len(classes), frontal_yaw=config.pose.frontal_yaw, device=device
            )
            if config.loss.init_from_embeddings:
                head.init_centres(centres.to(device))
        history.append({"epoch": 0, "dev": validator(model, device) if validator else None})

    anchors = anchors.to(device)
    for epoch in range(start_epoch, config.optim.epochs):
        dataset.set_epoch(epoch)
        generator.manual_seed(config.seed * 100_003 + epoch)
        model.train()
        train_split.db.close()  # the loader's worker processes open their own
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.optim.epochs}", mininterval=10)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                embeddings = backbone(x)
                loss = head(embeddings, y)
                if config.pose.anchor_weight:
                    loss = loss + config.pose.anchor_weight * _anchor_loss(embeddings, y, anchors)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        dev = validator(model, device) if validator else None
        history.append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), "step_losses": losses, "dev": dev}
        )
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save(
            {
                "config": config.to_dict(),
                "epoch": epoch + 1,
                "backbone": backbone.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "anchors": anchors,
            },
            tmp,
        )
        os.replace(tmp, checkpoint_path)
        plot_curves(history, out_dir / "curves.png", title=config.name)
        if (
            stop_after is not None
            and epoch + 1 - start_epoch >= stop_after
            and epoch + 1 < config.optim.epochs
        ):
            return {"name": config.name, "history": history, "stopped_after_epoch": epoch + 1}

    model = model.cpu().eval()
    torch.save(backbone.state_dict(), out_dir / "backbone.pt")  # weights to start other experiments from
    result: dict = {
        "name": config.name,
        "config": config.to_dict(),
        "device": device.type,
        "history": history,
    }
    if config.pose.method == "dream":
        assert validator is not None
        model.pose, result["pose"] = _fit_pose(model, train_split, labels, validator, config)
    result.update(_export(model, out_dir / "model.onnx", config, settings, train_split, validator))
    if register_model:
        assert "dev" in result
        version = config.export.version or f"{config.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        metrics = {key: result[key] for key in ("dev", "parity_max_abs_diff", "pose") if key in result}
        model_version = register(
            settings,
            exported_network(out_dir / "model.onnx", config.model.embedding_dim),
            version=version,
            threshold=result["dev"]["threshold"],
            metrics=metrics,
            data_digest=result["data_digest"],
            activate=config.export.activate,
        )
        result["version"] = model_version.version
        result["model_file"] = model_version.network.file
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _export(
    model: EmbeddingModel,
    onnx_path: Path,
    config: TrainConfig,
    settings: Settings,
    train: Split,
    validator: Validator | None,
) -> dict:
    """Export, check parity on real crops (dev faces, else training faces), and measure the exported
    model on the dev faces exactly as the embedder will run it."""
    export_onnx(model, onnx_path)
    faces = (validator.split if validator else train).crops(config.export.parity_faces)
    difference = parity(model, onnx_path, faces)
    if difference > config.export.parity_tolerance:
        raise ParityError(
            f"ONNX Runtime and PyTorch differ by {difference:.2e} "
            f"(> {config.export.parity_tolerance:.0e}) on {len(faces)} faces"
        )
    result = {"parity_max_abs_diff": difference, "data_digest": train.db.digest(train.indices)}
    if validator is not None:
        network = exported_network(onnx_path, config.model.embedding_dim)
        served = production_embeddings(settings, network, validator.split.crops())
        result["dev"] = validator.metrics(served)
    return result


def _fit_pose(
    model: EmbeddingModel, train: Split, labels: np.ndarray, validator: Validator, config: TrainConfig
) -> tuple[DreamMapping | None, dict]:
    """Fit the DREAM mapping on the frozen model; keep it only if it raises dev cross-pose accuracy
    without lowering overall dev accuracy."""
    cpu = torch.device("cpu")
    plain, mirrored = embed(model, train, batch_size=128, device=cpu)
    yaws = train.yaws
    mapping = fit_dream(
        np.concatenate([plain, mirrored]),
        np.concatenate([labels, labels]),
        np.concatenate([yaws, -yaws]),
        config.pose,
        seed=config.seed,
    )
    without = validator(model, cpu) if validator.views is None else validator.metrics(fuse(*validator.views))
    assert validator.views is not None
    with torch.no_grad():
        mapped = [mapping(torch.from_numpy(view)).numpy() for view in validator.views]
    with_mapping = validator.metrics(fuse(*mapped))
    kept = (
        with_mapping["cross_pose_accuracy"] > without["cross_pose_accuracy"]
        and with_mapping["accuracy"] >= without["accuracy"]
    )
    report = {"method": "dream", "kept": kept, "dev_without": without, "dev_with": with_mapping}
    return (mapping if kept else None), report
