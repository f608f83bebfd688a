"""Benchmark of the encrypted search engine (gateway-side tool: it holds the secret key).

``python -m veilface.bench.he --gallery 65536 --dim 1024 --out results/he.json
[--database-url mysql+mysqldb://root@127.0.0.1:3306/veilface_bench]``

Builds a gallery of synthetic unit templates clustered by identity, packs it into blocks
with the batch packer, stores it through the repository, loads it into a shard as the
matcher does, adds a delta, searches, compacts, and writes the measured figures as JSON.

``--matchers N`` (N > 1) instead streams the gallery into the database block by block, loads it into
N matcher processes (:mod:`veilface.bench.matcher_pool`) and times each query until the last one
answers (see ``docs/encrypted-search.md``, "Several matcher processes").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker
from tqdm import tqdm

from veilface.bench.latency_model import search_seconds
from veilface.bench.matcher_pool import MatcherPool, ShardSpec, resident_kib, summary
from veilface.config import Settings, load_settings
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.search import ranking, routing
from veilface.search.compaction import compact_block
from veilface.search.engine import prepare_probe, score_block
from veilface.search.layout import baby_steps_for
from veilface.search.packer import import_block
from veilface.search.results import ScoreResult
from veilface.search.shard import Shard
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Gallery, Subject, Template

GIB = 1024**3
TOP_K = 5


def identity_centres(n: int, dim: int, rng: np.random.Generator, per_identity: int = 8) -> np.ndarray:
    """Unit centres of the ``n / per_identity`` identities of an ``n``-template gallery."""
    centres = rng.standard_normal((max(1, n // per_identity), dim))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def noisy_templates(centres: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit templates ``indices``, each near the centre of identity ``index % len(centres)``."""
    dim = centres.shape[1]
    templates = centres[indices % len(centres)] + rng.standard_normal((len(indices), dim)) * (
        0.6 / math.sqrt(dim)
    )
    return templates / np.linalg.norm(templates, axis=1, keepdims=True)


def synthetic_gallery(n: int, dim: int, rng: np.random.Generator, per_identity: int = 8):
    """``n`` unit templates around ``n / per_identity`` identity centres, and the identity of each."""
    centres = identity_centres(n, dim, rng, per_identity)
    indices = np.arange(n)
    return noisy_templates(centres, indices, rng), centres, indices % len(centres)


def ensure_database(url: str) -> None:
    """Create the MySQL/MariaDB database named in ``url`` if it does not exist."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        return
    server = create_engine(parsed.set(database=""))
    with server.begin() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`"))
    server.dispose()


def machine_info() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tenseal": ts.__version__,
        "platform": platform.platform(),
    }


def time_product(ctx: PublicContext, rng: np.random.Generator, repeats: int = 200) -> float:
    """Seconds per ciphertext-ciphertext product (no relinearisation) at the packed level."""
    a = ctx.encrypt(rng.standard_normal(ctx.slots) * 0.05, ctx.packed_level)
    b = ctx.encrypt(rng.standard_normal(ctx.slots) * 0.05, ctx.packed_level)
    out = sealapi.Ciphertext()
    start = time.perf_counter()
    for _ in range(repeats):
        ctx.evaluator.multiply(a, b, out)
    return (time.perf_counter() - start) / repeats


def time_rotations(ctx: PublicContext, rng: np.random.Generator, repeats: int = 50) -> tuple[float, float]:
    """Seconds per baby step (a probe rotation at the packed level) and per giant step (rescale,
    relinearisation and rotation of a size-3 partial sum at the score level)."""
    a = ctx.encrypt(rng.standard_normal(ctx.slots) * 0.05, ctx.packed_level)
    partial = sealapi.Ciphertext()
    ctx.evaluator.multiply(a, a, partial)
    start = time.perf_counter()
    for _ in range(repeats):
        ctx.rotate(a, 1)
    baby = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        rescaled = sealapi.Ciphertext()
        ctx.evaluator.rescale_to_next(partial, rescaled)
        ctx.evaluator.relinearize_inplace(rescaled, ctx.relin_keys)
        ctx.rotate(rescaled, 32)
    return baby, (time.perf_counter() - start) / repeats


def time_block_layouts(
    ctx: PublicContext, dim: int, layouts: Iterable[int], rng: np.random.Generator, repeats: int = 3
) -> dict[int, float]:
    """Seconds to score one full block of random unit templates laid out with each number of baby
    steps in ``layouts`` (median of ``repeats``; the probe's rotations are not counted), all in one
    process: how the block time of the plan compares with the single-step layout (``g = d``) and
    with the layout of a large gallery."""
    capacity = ctx.params.block_capacity
    templates = noisy_templates(identity_centres(capacity, dim, rng), np.arange(capacity), rng)
    probe = encrypt_probe(ctx, templates[0])
    seconds = {}
    for baby_steps in layouts:
        rows = ctx.layout(dim).diagonals(templates, np.arange(capacity), baby_steps)
        diagonals = [ctx.encrypt(row, ctx.packed_level) for row in rows]
        prepared = prepare_probe(ctx, probe, dim, baby_steps)
        prepared.rotations  # noqa: B018 - computed before the clock starts
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            score_block(ctx, diagonals, baby_steps, prepared)
            times.append(time.perf_counter() - start)
        seconds[baby_steps] = statistics.median(times)
    return seconds


def time_naive(templates: np.ndarray, probe: np.ndarray) -> float:
    """Seconds per template of TenSEAL ``CKKSVector.dot`` (one ciphertext per template).

    Uses the cheaper chain ``[60, 40, 60]`` of the original one-ciphertext-per-template design.
    """
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    context.global_scale = 2**40
    context.generate_galois_keys()
    encrypted = [ts.ckks_vector(context, row.tolist()) for row in templates]
    query = ts.ckks_vector(context, probe.tolist())
    start = time.perf_counter()
    for vector in encrypted:
        vector.dot(query)
    return (time.perf_counter() - start) / len(encrypted)


@dataclass(frozen=True)
class Bench:
    """A fresh key set and bench gallery in the database of ``settings``."""

    settings: Settings
    engine: Engine
    factory: sessionmaker
    keys: Path
    ctx: PublicContext
    secret: SecretContext
    gallery_id: int
    model_version: str
    subject_ids: dict[str, int]

    @property
    def capacity(self) -> int:
        """Templates per packed block."""
        return self.ctx.params.block_capacity

    def template_rows(self, indices: np.ndarray, identities: int, state: str, ciphertexts=None) -> list[dict]:
        """Rows of templates ``indices`` (template ``n`` belongs to identity ``n % identities``)."""
        return [
            {
                "gallery_id": self.gallery_id,
                "subject_id": int(self.subject_ids[f"id{n % identities}"]),
                "model_version": self.model_version,
                "image_sha256": f"{n:064x}",
                "block_no": n // self.capacity,
                "slot": n % self.capacity,
                "state": state,
                "ciphertext": None if ciphertexts is None else ciphertexts[k],
            }
            for k, n in enumerate(int(i) for i in indices)
        ]


def open_bench(args: argparse.Namespace, identities: int) -> Bench:
    """Keys, database schema and an empty gallery of ``identities`` subjects for a run."""
    workdir = Path(tempfile.mkdtemp(prefix="veilface-bench-"))
    settings = load_settings(var_dir=workdir, database_url=args.database_url or "")
    ensure_database(settings.sqlalchemy_url)
    engine = make_engine(settings)
    create_schema(engine)
    factory = session_factory(engine)

    generate_keyset(workdir / "keys")
    ctx = PublicContext.load(workdir / "keys" / "public.ctx")
    secret = SecretContext.load(workdir / "keys" / "secret.ctx")
    secret.check_fingerprint(ctx.fingerprint)
    with session_scope(factory) as session:
        gallery = Gallery(name=f"bench-{os.getpid()}-{time.time_ns()}")
        session.add(gallery)
        session.flush()
        gallery_id = gallery.id
        session.execute(
            insert(Subject), [{"gallery_id": gallery_id, "name": f"id{i}"} for i in range(identities)]
        )
        subject_ids = dict(
            session.execute(
                text("SELECT name, id FROM subjects WHERE gallery_id = :g"), {"g": gallery_id}
            ).all()
        )
    return Bench(
        settings, engine, factory, workdir / "keys", ctx, secret, gallery_id, f"bench-{args.dim}", subject_ids
    )


def import_gallery(
    bench: Bench, blocks: Iterable[tuple[np.ndarray, np.ndarray]], count: int, identities: int
) -> tuple[float, list[float]]:
    """Bulk import with the batch packer, one block per transaction, streaming: each
    ``(indices, templates)`` of ``blocks`` is packed, written and dropped before the next.

    Returns the seconds taken and the stored bytes per template of each block.
    """
    capacity = bench.capacity
    block_bytes = []
    start = time.perf_counter()
    for indices, templates in tqdm(
        blocks, desc="pack+store blocks", unit="block", total=math.ceil(count / capacity)
    ):
        with session_scope(bench.factory) as session:
            block = import_block(
                bench.ctx,
                session,
                bench.gallery_id,
                bench.model_version,
                int(indices[0]) // capacity,
                templates,
                indices % capacity,
                blocks=math.ceil(count / capacity),
            )
            session.execute(insert(Template), bench.template_rows(indices, identities, "packed"))
            stored = session.scalar(
                text("SELECT SUM(LENGTH(ciphertext)) FROM block_ciphertexts WHERE block_id = :b"),
                {"b": block.block_id},
            )
        block_bytes.append(int(stored) / len(indices))
    return time.perf_counter() - start, block_bytes


def block_indices(count: int, capacity: int) -> Iterator[np.ndarray]:
    """The template indices of each block of a ``count``-template import, in order."""
    for first in range(0, count, capacity):
        yield np.arange(first, min(first + capacity, count))


def live_templates(count: int, capacity: int) -> dict[tuple[int, int], int]:
    """``(block_no, slot) -> template`` for templates ``0 .. count - 1`` in import order."""
    return {(n // capacity, n % capacity): n for n in range(count)}


def check_scores(
    bench: Bench, results: Sequence[ScoreResult], plain: np.ndarray, live: Mapping[tuple[int, int], int]
) -> tuple[float, bool]:
    """Decrypt one query's ``results`` as the gateway does: the largest score error against the
    plaintext scores ``plain`` (by template), and whether the top-k equals the plaintext one."""
    ctx = bench.ctx
    decrypted = [(r, bench.secret.decrypt_scores(r.ciphertext, r.source)) for r in results]
    errors = []
    for result, vector in decrypted:
        slots = np.asarray(result.slots)
        got = ctx.layout(result.dim).slot_scores(vector, slots)
        errors.append(float(np.max(np.abs(got - plain[result.block_no * bench.capacity + slots]))))
    encrypted_top = [t for t, _ in ranking.top_k(decrypted, live, TOP_K, ctx.slots)]
    return max(errors), encrypted_top == list(np.argsort(-plain, kind="stable")[:TOP_K])


def run(args: argparse.Namespace) -> dict:
    """One process: import, load, search, delta and compaction (``--matchers 1``)."""
    rng = np.random.default_rng(args.seed)
    total = args.gallery + args.delta
    templates, centres, _ = synthetic_gallery(total, args.dim, rng)
    bench = open_bench(args, len(centres))
    ctx, engine, factory = bench.ctx, bench.engine, bench.factory
    gallery_id, model_version, capacity = bench.gallery_id, bench.model_version, bench.capacity

    blocks = ((indices, templates[indices]) for indices in block_indices(args.gallery, capacity))
    import_s, block_bytes = import_gallery(bench, blocks, args.gallery, len(centres))

    # Delta: templates enrolled one by one by the embedder.
    delta_indices = np.arange(args.gallery, total)
    start = time.perf_counter()
    delta_blobs = [encrypt_template(ctx, templates[n], int(n % capacity)) for n in delta_indices]
    encrypt_template_s = (time.perf_counter() - start) / max(1, len(delta_indices))
    with session_scope(factory) as session:
        session.execute(
            insert(Template), bench.template_rows(delta_indices, len(centres), "delta", delta_blobs)
        )

    rss_before = resident_kib()
    shard = Shard(ctx, gallery_id, model_version, args.dim)
    start = time.perf_counter()
    with session_scope(factory) as session:
        shard.refresh(session)
    load_s = time.perf_counter() - start
    baby_steps = [shard.blocks[n].ref.baby_steps for n in sorted(shard.blocks)]
    rss_per_template = (resident_kib() - rss_before) * 1024 / max(1, args.gallery)

    live = live_templates(total, capacity)
    queries = noisy_templates(centres, rng.integers(0, len(centres), args.queries), rng)

    def evaluate(searcher, label):
        fixed, per_block, per_delta, errors, agree = [], [], [], [], 0
        for query in tqdm(queries, desc=label, unit="query"):
            probe = encrypt_probe(ctx, query)
            start = time.perf_counter()
            prepared = searcher.prepare(probe)
            prepared.rotations  # noqa: B018 - the once-per-query rotations are the fixed cost
            fixed.append(time.perf_counter() - start)
            results = []
            start = time.perf_counter()
            for result in searcher.search_blocks(prepared):
                results.append(result)
            blocks = sum(1 for r in results if r.source == "block")
            if blocks:
                per_block.append((time.perf_counter() - start) / blocks)
            start = time.perf_counter()
            delta_results = list(searcher.search_delta(prepared))
            if delta_results:
                per_delta.append((time.perf_counter() - start) / sum(len(r.slots) for r in delta_results))
            results += delta_results
            error, same_top = check_scores(bench, results, templates @ query, live)
            errors.append(error)
            agree += same_top
        return fixed, per_block, per_delta, max(errors), agree / len(queries)

    fixed, per_block, per_delta, max_error, agreement = evaluate(shard, "search")

    # Compaction of the delta into its block(s), then a check of the folded scores.
    start = time.perf_counter()
    for block_no in sorted({int(n // capacity) for n in delta_indices}):
        compact_block(ctx, factory, gallery_id, model_version, block_no, args.dim)
    compaction_s = (time.perf_counter() - start) / max(1, len(delta_indices))
    with session_scope(factory) as session:
        shard.refresh(session)
    queries = queries[: max(1, args.queries // 5)]
    _, _, _, max_error_compacted, agreement_compacted = evaluate(shard, "search after compaction")

    t_block = statistics.median(per_block)
    t_fixed = statistics.median(fixed)
    t_product = time_product(ctx, rng)
    t_baby, t_giant = time_rotations(ctx, rng)
    large_gallery_steps = baby_steps_for(args.dim, 2**20 // capacity)
    layouts = time_block_layouts(ctx, args.dim, sorted({args.dim, large_gallery_steps}), rng)
    sample = min(args.naive_sample, total)
    t_naive = time_naive(templates[:sample], queries[0])
    per_core = capacity / t_block
    cores = os.cpu_count() or 1
    per_template_memory = shard.resident_bytes / (len(shard.blocks) * capacity)
    report = {
        "gallery": args.gallery,
        "dim": args.dim,
        "queries": args.queries,
        "database": engine.dialect.name,
        "block_capacity": capacity,
        "blocks": math.ceil(args.gallery / capacity),
        "templates_per_s_per_core": per_core,
        "naive_templates_per_s_per_core": 1 / t_naive,
        "speedup_vs_naive": per_core / (1 / t_naive),
        "bound_templates_per_s_per_core": ctx.slots / (args.dim * t_product),
        "fraction_of_bound": per_core / (ctx.slots / (args.dim * t_product)),
        "bound_two_lanes_templates_per_s_per_core": capacity / (args.dim * t_product),
        "fraction_of_two_lane_bound": per_core / (capacity / (args.dim * t_product)),
        "product_ms": t_product * 1e3,
        "block_search_ms": t_block * 1e3,
        "query_fixed_s": t_fixed,
        "baby_steps": baby_steps,
        "baby_step_ms": t_baby * 1e3,
        "giant_step_ms": t_giant * 1e3,
        "templates_per_s_per_core_single_step": capacity / layouts[args.dim],
        "baby_steps_2p20": large_gallery_steps,
        "templates_per_s_per_core_2p20_layout": capacity / layouts[large_gallery_steps],
        "score_ciphertext_bytes": len(results_sample_bytes(shard, ctx, queries[0])),
        "extrapolated_2p20_s": None,  # the cost model, below
        "extrapolated_2p20_cores": cores,
        "bytes_per_template": statistics.mean(block_bytes[:-1] or block_bytes),
        "delta_template_bytes": statistics.mean(len(b) for b in delta_blobs) if delta_blobs else None,
        "max_abs_error": max(max_error, max_error_compacted),
        "topk_agreement": min(agreement, agreement_compacted),
        "delta_templates": args.delta,
        "delta_search_ms_per_template": statistics.median(per_delta) * 1e3 if per_delta else None,
        "compaction_ms_per_template": compaction_s * 1e3 if args.delta else None,
        "encrypt_template_ms": encrypt_template_s * 1e3 if args.delta else None,
        "import_s": import_s,
        "import_ms_per_template": import_s / args.gallery * 1e3,
        "shard_load_s": load_s,
        "resident_bytes_per_template": per_template_memory,
        "rss_bytes_per_template": rss_per_template,
        "templates_per_24_gib": int(24 * GIB / per_template_memory),
        "machine": machine_info(),
    }
    report["extrapolated_2p20_s"] = search_seconds(report, 2**20, cores)
    return report


def run_matchers(args: argparse.Namespace) -> dict:
    """``--matchers N`` (N > 1): stream the gallery into the database with the bulk importer, load
    it into N matcher processes (blocks assigned as the gateway assigns them) and time each query
    from sending its probe to all of them until the last answers. No delta, no compaction."""
    rng = np.random.default_rng(args.seed)
    centres = identity_centres(args.gallery, args.dim, rng)
    queries = noisy_templates(centres, rng.integers(0, len(centres), args.queries), rng)
    bench = open_bench(args, len(centres))
    capacity = bench.capacity

    # Plaintext scores of every query, filled block by block as the import streams.
    plain = np.empty((args.queries, args.gallery))

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for indices in block_indices(args.gallery, capacity):
            templates = noisy_templates(centres, indices, rng)
            plain[:, indices] = queries @ templates.T
            yield indices, templates

    import_s, block_bytes = import_gallery(bench, blocks(), args.gallery, len(centres))
    size = database_bytes(bench.engine)

    workers = [f"matcher-{i}" for i in range(args.matchers)]
    assignment = routing.assign(
        workers,
        range(math.ceil(args.gallery / capacity)),
        key=lambda b: f"{bench.gallery_id}:{bench.model_version}:{b}",
    )
    specs = [
        ShardSpec(
            bench.keys / "public.ctx",
            bench.settings.sqlalchemy_url,
            bench.gallery_id,
            bench.model_version,
            args.dim,
            tuple(assignment[w]),
        )
        for w in workers
    ]
    live = live_templates(args.gallery, capacity)
    walls, per_process, errors, agree = [], [], [], 0
    with MatcherPool(specs) as pool:
        for k, query in enumerate(tqdm(queries, desc=f"search, {args.matchers} matchers", unit="query")):
            results, wall, seconds = pool.search(encrypt_probe(bench.ctx, query))
            walls.append(wall)
            per_process.append(seconds)
            error, same_top = check_scores(bench, results, plain[k], live)
            errors.append(error)
            agree += same_top
    loaded = pool.loaded
    held = sum(m.templates for m in loaded)
    return {
        "gallery": args.gallery,
        "dim": args.dim,
        "queries": args.queries,
        "database": bench.engine.dialect.name,
        "block_capacity": capacity,
        "blocks": math.ceil(args.gallery / capacity),
        "matchers": args.matchers,
        "query_wall_p50_s": statistics.median(walls),
        "query_wall_mean_s": statistics.fmean(walls),
        "query_wall_max_s": max(walls),
        "query_wall_s": walls,
        "templates_per_s": args.gallery / statistics.median(walls),
        "max_abs_error": max(errors),
        "topk_agreement": agree / len(queries),
        "import_s": import_s,
        "import_ms_per_template": import_s / args.gallery * 1e3,
        "bytes_per_template": statistics.mean(block_bytes[:-1] or block_bytes),
        "database_bytes": size,
        "database_bytes_per_template": size / args.gallery if size else None,
        "shard_load_s": pool.load_s,
        "resident_bytes_per_template": sum(m.resident_bytes for m in loaded) / held,
        "rss_bytes_per_template": sum(m.rss_after_bytes - m.rss_before_bytes for m in loaded) / held,
        "matcher_processes": [
            {
                "blocks": len(spec.blocks),
                "templates": m.templates,
                "load_s": m.load_s,
                "search_s": summary([seconds[i] for seconds in per_process]),
                "rss_after_load_gib": m.rss_after_bytes / GIB,
                "rss_bytes_per_template": m.rss_bytes_per_template,
            }
            for i, (spec, m) in enumerate(zip(specs, loaded, strict=True))
        ],
        "machine": machine_info(),
    }


def database_bytes(engine: Engine) -> int | None:
    """Data and index bytes of the bench's MySQL/MariaDB database (every gallery in it), from
    ``information_schema`` after refreshing the statistics; ``None`` on other databases."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return None
    with engine.connect() as conn:
        conn.execute(text("ANALYZE TABLE block_ciphertexts, blocks, templates")).all()
        total = conn.scalar(
            text(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables"
                " WHERE table_schema = DATABASE()"
            )
        )
    return int(total)


def results_sample_bytes(shard: Shard, ctx: PublicContext, query: np.ndarray) -> bytes:
    """One block's score ciphertext, to report what travels back to the gateway."""
    prepared = shard.prepare(encrypt_probe(ctx, query))
    return next(iter(shard.search_blocks(prepared))).ciphertext


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=65536, help="templates packed with the batch packer")
    parser.add_argument("--dim", type=int, default=1024, choices=[128, 256, 512, 1024])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument(
        "--delta", type=int, default=64, help="templates enrolled one by one after the import"
    )
    parser.add_argument("--naive-sample", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--matchers",
        type=int,
        default=1,
        help="over 1: search the bulk-imported gallery with this many matcher processes at once"
        " (no delta or compaction; a database shared by processes: MariaDB via --database-url)",
    )
    args = parser.parse_args(argv)
    if args.matchers < 1:
        parser.error("--matchers must be at least 1")
    report = run(args) if args.matchers == 1 else run_matchers(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
