"""Benchmark of the encrypted search engine (gateway-side tool: it holds the secret key).

``python -m veilface.bench.he --gallery 65536 --dim 1024 --out results/he.json
[--database-url mysql+mysqldb://root@127.0.0.1:3306/veilface_bench]``

Builds a gallery of synthetic unit templates clustered by identity, packs it into blocks
with the batch packer, stores it through the repository, loads it into a shard as the
matcher does, adds a delta, searches, compacts, and writes the measured figures as JSON.
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
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from tqdm import tqdm

from veilface.bench.latency_model import search_seconds
from veilface.config import load_settings
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.search import ranking
from veilface.search.compaction import compact_block
from veilface.search.packer import import_block
from veilface.search.shard import Shard
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Gallery, Subject, Template

GIB = 1024**3
TOP_K = 5


def synthetic_gallery(n: int, dim: int, rng: np.random.Generator, per_identity: int = 8):
    """``n`` unit templates around ``n / per_identity`` identity centres, and the identity of each."""
    identities = max(1, n // per_identity)
    centres = rng.standard_normal((identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.arange(n) % identities
    templates = centres[owner] + rng.standard_normal((n, dim)) * (0.6 / math.sqrt(dim))
    return templates / np.linalg.norm(templates, axis=1, keepdims=True), centres, owner


def ensure_database(url: str) -> None:
    """Create the MySQL/MariaDB database named in ``url`` if it does not exist."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        return
    server = create_engine(parsed.set(database=""))
    with server.begin() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`"))
    server.dispose()


def resident_kib() -> float:
    """Resident set size of this process in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


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


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
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
    layout = ctx.layout(args.dim)
    capacity = layout.capacity
    model_version = f"bench-{args.dim}"

    total = args.gallery + args.delta
    templates, centres, owner = synthetic_gallery(total, args.dim, rng)
    with session_scope(factory) as session:
        gallery = Gallery(name=f"bench-{os.getpid()}-{time.time_ns()}")
        session.add(gallery)
        session.flush()
        gallery_id = gallery.id
        session.execute(
            insert(Subject), [{"gallery_id": gallery_id, "name": f"id{i}"} for i in range(len(centres))]
        )
        subject_ids = dict(
            session.execute(
                text("SELECT name, id FROM subjects WHERE gallery_id = :g"), {"g": gallery_id}
            ).all()
        )

    def template_rows(indices, state, ciphertexts=None):
        return [
            {
                "gallery_id": gallery_id,
                "subject_id": int(subject_ids[f"id{owner[n]}"]),
                "model_version": model_version,
                "image_sha256": f"{n:064x}",
                "block_no": n // capacity,
                "slot": n % capacity,
                "state": state,
                "ciphertext": None if ciphertexts is None else ciphertexts[k],
            }
            for k, n in enumerate(int(i) for i in indices)
        ]

    # Bulk import with the batch packer, one block per transaction.
    block_bytes = []
    start = time.perf_counter()
    for first in tqdm(range(0, args.gallery, capacity), desc="pack+store blocks", unit="block"):
        indices = np.arange(first, min(first + capacity, args.gallery))
        with session_scope(factory) as session:
            block = import_block(
                ctx,
                session,
                gallery_id,
                model_version,
                first // capacity,
                templates[indices],
                indices % capacity,
                blocks=math.ceil(args.gallery / capacity),
            )
            session.execute(insert(Template), template_rows(indices, "packed"))
            stored = session.scalar(
                text("SELECT SUM(LENGTH(ciphertext)) FROM block_ciphertexts WHERE block_id = :b"),
                {"b": block.block_id},
            )
        block_bytes.append(stored / len(indices))
    import_s = time.perf_counter() - start

    # Delta: templates enrolled one by one by the embedder.
    delta_indices = np.arange(args.gallery, total)
    start = time.perf_counter()
    delta_blobs = [encrypt_template(ctx, templates[n], int(n % capacity)) for n in delta_indices]
    encrypt_template_s = (time.perf_counter() - start) / max(1, len(delta_indices))
    with session_scope(factory) as session:
        session.execute(insert(Template), template_rows(delta_indices, "delta", delta_blobs))

    rss_before = resident_kib()
    shard = Shard(ctx, gallery_id, model_version, args.dim)
    start = time.perf_counter()
    with session_scope(factory) as session:
        shard.refresh(session)
    load_s = time.perf_counter() - start
    baby_steps = [shard.blocks[n].ref.baby_steps for n in sorted(shard.blocks)]
    rss_per_template = (resident_kib() - rss_before) * 1024 / max(1, args.gallery)

    live = {(int(n // capacity), int(n % capacity)): int(n) for n in range(total)}
    queries = centres[rng.integers(0, len(centres), args.queries)]
    queries = queries + rng.standard_normal(queries.shape) * (0.6 / math.sqrt(args.dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

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
            decrypted = [(r, secret.decrypt_scores(r.ciphertext, r.source)) for r in results]
            plain = templates @ query
            for result, vector in decrypted:
                slots = np.asarray(result.slots)
                got = ctx.layout(result.dim).slot_scores(vector, slots)
                errors.append(float(np.max(np.abs(got - plain[result.block_no * capacity + slots]))))
            encrypted_top = [t for t, _ in ranking.top_k(decrypted, live, TOP_K, ctx.slots)]
            agree += encrypted_top == list(np.argsort(-plain, kind="stable")[:TOP_K])
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
    args = parser.parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
