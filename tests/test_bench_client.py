"""The pure logic of ``veilface.bench.client``: what it reads from a search exchange and how it sums
up the queries (no stack, no timing asserted)."""

from __future__ import annotations

import base64
import json

from veilface.bench.client import PARTS, Query, Stopwatch, answer_sizes, report


def _b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


def test_answer_sizes_reads_the_probe_and_score_ciphertexts_of_one_exchange():
    request = json.dumps({"probes": [_b64(300), _b64(300)]}).encode()
    scores = [
        {"block": b, "source": "block", "dim": 512, "ciphertext": _b64(200), "subjects": []} for b in (0, 1)
    ]
    response = json.dumps({"probes": [{"scores": scores}, {"scores": scores}]}).encode()
    assert answer_sizes(request, response) == {
        "probes": 2,
        "probe_ciphertext_bytes": 300,
        "score_ciphertexts": 2,
        "score_ciphertext_bytes": 200,
    }


def _query(total: float, top1: str | None, sizes: dict[str, int]) -> Query:
    parts = {part: total / len(PARTS) for part in PARTS}
    return Query(total, parts, up_bytes=100, down_bytes=50, top1=top1, answer_sizes=sizes)


def test_report_counts_top1_and_leaves_unsearched_queries_out_of_the_sizes():
    sizes = {
        "probes": 1,
        "probe_ciphertext_bytes": 300,
        "score_ciphertexts": 3,
        "score_ciphertext_bytes": 200,
    }
    queries = [_query(1.0, "a", sizes), _query(2.0, "x", sizes), _query(0.5, None, {})]
    figures = report(queries, ["a", "b", "c"])
    assert figures["queries"] == 3 and figures["top1_correct"] == 1
    assert figures["identify_s"] == {"p50": 1.0, "p95": 2.0, "mean": round(3.5 / 3, 3)}
    assert figures["local_s"]["p50"] == 0.75  # the total less the round trip
    assert figures["up_bytes"]["mean"] == 100 and figures["down_bytes"]["mean"] == 50
    assert figures["score_ciphertexts_per_answer"] == {"p50": 3, "p95": 3, "mean": 3.0}
    assert figures["probe_ciphertext_bytes"] == 300 and figures["score_ciphertext_bytes"] == 200


def test_stopwatch_times_only_the_named_methods_and_passes_the_rest_through():
    class Target:
        version = "v1"

        def work(self, x: int) -> int:
            return 2 * x

        def other(self) -> str:
            return "o"

    watch = Stopwatch(Target(), "work")
    assert watch.work(3) == 6 and watch.other() == "o" and watch.version == "v1"
    assert watch.seconds > 0
    watch.seconds = 0.0
    watch.other()
    assert watch.seconds == 0.0
