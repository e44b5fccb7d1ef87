"""Retrieval metrics: parity vectors, a line-by-line reference of the official functions, ties, DDP sync."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from xclip_lightning.metrics import RetrievalMetrics, querybank_normalise, retrieval_metrics

NAMES = ["R1", "R5", "R10", "MdR", "MnR"]


def official_compute_metrics(x: np.ndarray) -> dict[str, float]:
    """The official single-caption function, restated from xclip-spec.md §10 with numpy, loop-free as there."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {
        "R1": np.sum(ind == 0) * 100 / len(ind),
        "R5": np.sum(ind < 5) * 100 / len(ind),
        "R10": np.sum(ind < 10) * 100 / len(ind),
        "MdR": np.median(ind) + 1,
        "MnR": np.mean(ind) + 1,
    }


def official_multi_caption(sim: np.ndarray, counts: list[int]) -> dict[str, dict[str, float]]:
    """The official MSVD path: pad to [V, maxcap, V] with -inf, double argsort, max over captions."""
    groups, start = [], 0
    for c in counts:
        block = sim[start : start + c]
        groups.append(np.concatenate([block, np.full((max(counts) - c, sim.shape[1]), -np.inf)]))
        start += c
    stacked = torch.tensor(np.stack(groups))  # [V, maxcap, V]
    second = torch.argsort(torch.argsort(stacked.permute(1, 0, 2), dim=-1, descending=True), dim=-1)
    ranks = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    gt = torch.flatten(torch.diagonal(stacked, dim1=0, dim2=2))
    ranks = ranks[~(torch.isinf(gt) | torch.isnan(gt))]
    t2v = {f"R{k}": float((ranks < k).sum() * 100 / len(ranks)) for k in (1, 5, 10)}
    t2v["MdR"], t2v["MnR"] = float(torch.median(ranks + 1)), float(np.mean(ranks.numpy() + 1))
    v2t = official_compute_metrics(stacked.max(dim=1).values.T.numpy())
    return {"t2v": t2v, "v2t": v2t}


@pytest.mark.parametrize("case", ["single_caption", "multi_caption"])
def test_parity_vectors(shared_dir, case):
    v = load_file(str(shared_dir / "parity" / f"metrics_{case}.safetensors"))
    result = retrieval_metrics(v["input.sim"], v.get("input.captions_per_video"))
    for direction in ("t2v", "v2t"):
        for name in NAMES:
            assert result[direction][name] == pytest.approx(v[f"expected.{direction}.{name}"].item(), abs=1e-8)


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_single_caption_matches_the_official_function_with_ties_and_nan(n):
    rng = np.random.default_rng(n)
    sim = rng.integers(0, 4, size=(n, n)).astype(np.float64)  # many ties, even counts of entries
    if n > 2:
        sim[1, 1] = np.nan  # a NaN row disappears
    ours = retrieval_metrics(torch.tensor(sim))
    assert ours["t2v"] == pytest.approx(official_compute_metrics(sim))
    assert ours["v2t"] == pytest.approx(official_compute_metrics(sim.T))


def test_multi_caption_matches_the_official_path():
    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(1, 6, size=40)]
    sim = rng.standard_normal((sum(counts), 40))
    ours = retrieval_metrics(torch.tensor(sim), counts)
    reference = official_multi_caption(sim, counts)
    for direction in ("t2v", "v2t"):
        assert ours[direction] == pytest.approx(reference[direction])


def test_multi_caption_counts_are_checked():
    with pytest.raises(ValueError, match="captions_per_video"):
        retrieval_metrics(torch.zeros(5, 2), [2, 2])


def slow_metrics(sim: np.ndarray, counts: list[int]) -> dict[str, dict[str, float]]:
    """One query at a time, in plain Python, on scores without ties: each text ranks every video (distractors
    included); each captioned video ranks the captioned videos' caption groups (a group scores its best caption)."""
    video_of = [v for v, c in enumerate(counts) for _ in range(c)]
    multi = max(counts) > 1

    def summary(ranks: list[int], lower_median: bool) -> dict[str, float]:
        ordered = sorted(ranks)
        n = len(ordered)
        median = ordered[(n - 1) // 2] if lower_median else (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        out = {f"R{k}": 100 * sum(r < k for r in ranks) / n for k in (1, 5, 10)}
        return {**out, "MdR": median + 1, "MnR": sum(ranks) / n + 1}

    t2v = [sum(sim[t, v] > sim[t, video_of[t]] for v in range(sim.shape[1])) for t in range(sim.shape[0])]
    captioned = [v for v, c in enumerate(counts) if c]
    group = {v: [t for t in range(sim.shape[0]) if video_of[t] == v] for v in captioned}
    v2t = []
    for v in captioned:
        score = {g: max(sim[t, v] for t in group[g]) for g in captioned}
        v2t.append(sum(score[g] > score[v] for g in captioned))
    return {"t2v": summary(t2v, lower_median=multi), "v2t": summary(v2t, lower_median=False)}


@pytest.mark.parametrize("case", ["more videos than texts", "more texts than videos", "both, with distractors"])
def test_non_square_matrices_against_a_query_by_query_computation(case):
    rng = np.random.default_rng(len(case))
    counts = {
        "more videos than texts": [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1],
        "more texts than videos": [int(c) for c in rng.integers(1, 5, size=17)],
        "both, with distractors": [int(c) for c in rng.integers(0, 4, size=23)],
    }[case]
    sim = rng.standard_normal((sum(counts), len(counts)))
    sim[np.arange(sum(counts)), [v for v, c in enumerate(counts) for _ in range(c)]] += 1.5  # some signal
    ours = retrieval_metrics(torch.tensor(sim), counts)
    reference = slow_metrics(sim, counts)
    for direction in ("t2v", "v2t"):
        assert ours[direction] == pytest.approx(reference[direction]), direction
    # the order of the videos (each keeping its captions) changes nothing
    order = rng.permutation(len(counts))
    rows = np.concatenate([np.flatnonzero(np.repeat(np.arange(len(counts)), counts) == v) for v in order])
    shuffled = retrieval_metrics(torch.tensor(sim[rows][:, order]), [counts[v] for v in order])
    for direction in ("t2v", "v2t"):
        assert shuffled[direction] == pytest.approx(ours[direction])


def test_distractors_only_make_text_to_video_harder():
    sim = torch.zeros(5, 6)
    sim[:, :5] = torch.eye(5)
    sim[:, 5] = 0.5  # a distractor that outscores no ground truth
    alone = retrieval_metrics(sim[:, :5].clone())
    assert retrieval_metrics(sim, [1, 1, 1, 1, 1, 0]) == alone
    sim[2, 5] = 2.0  # now it beats the ground truth of text 2
    hurt = retrieval_metrics(sim, [1, 1, 1, 1, 1, 0])
    assert hurt["t2v"]["R1"] == 80.0 and hurt["v2t"] == alone["v2t"]


def test_querybank_normalisation_against_its_formula():
    """Dynamic inverted softmax written out: exp(beta s) / sum over the bank of exp(beta bank), for the queries
    whose best video is some bank query's best; the raw scores for the others."""
    rng = np.random.default_rng(3)
    sim, bank, beta = rng.standard_normal((40, 25)) * 3, rng.standard_normal((60, 25)) * 3, 0.7
    activated = set(bank.argmax(1).tolist())
    expected = np.array(
        [
            [np.exp(beta * s) / np.exp(beta * bank[:, j]).sum() for j, s in enumerate(row)]
            if int(np.argmax(row)) in activated
            else row
            for row in sim
        ]
    )
    ours = querybank_normalise(torch.tensor(sim), torch.tensor(bank), beta).numpy()
    assert (np.argsort(-ours, axis=1) == np.argsort(-expected, axis=1)).all()  # the same ranking per query
    assert any(int(np.argmax(r)) not in activated for r in sim) and any(int(np.argmax(r)) in activated for r in sim)


def test_querybank_normalisation_demotes_a_hub_and_is_reported_apart():
    torch.manual_seed(0)
    sim = torch.randn(50, 50) * 5 + torch.eye(50) * 8
    sim[:, 0] += 12  # a hub: close to every text
    bank = torch.randn(200, 50) * 5
    bank[:, 0] += 12  # the training captions see the same hub
    plain = retrieval_metrics(sim)
    both = retrieval_metrics(sim, querybank=bank)
    assert set(both) == {"t2v", "v2t", "t2v_qb"} and both["t2v"] == plain["t2v"] and both["v2t"] == plain["v2t"]
    assert both["t2v_qb"]["R1"] >= plain["t2v"]["R1"] + 10  # 10 -> 26 here


def test_dsl_is_reported_apart_and_leaves_raw_numbers_alone():
    torch.manual_seed(0)
    sim = torch.randn(30, 30) * 10 + torch.eye(30) * 8
    raw = retrieval_metrics(sim)
    both = retrieval_metrics(sim, dsl=True)
    assert set(both) == {"t2v", "v2t", "t2v_dsl", "v2t_dsl"}
    assert both["t2v"] == raw["t2v"] and both["v2t"] == raw["v2t"]
    # a video that wins many rows (a hub) is demoted by DSL: the re-ranked numbers differ
    hub = sim.clone()
    hub[:, 0] += 15
    assert retrieval_metrics(hub, dsl=True)["t2v_dsl"]["R1"] > retrieval_metrics(hub)["t2v"]["R1"]


def test_metric_wrapper_drops_duplicates_and_catches_missing_texts():
    torch.manual_seed(0)
    sim = torch.randn(10, 10)
    metric = RetrievalMetrics()
    metric.update(sim[:6], torch.arange(6))
    metric.update(sim[4:], torch.arange(4, 10))  # 4 and 5 twice, as DistributedSampler padding does
    result = metric.compute()
    assert result["t2v/R1"].item() == pytest.approx(retrieval_metrics(sim)["t2v"]["R1"])
    incomplete = RetrievalMetrics()
    incomplete.update(sim[:6], torch.arange(6))
    incomplete.update(sim[7:], torch.arange(7, 10))
    with pytest.raises(ValueError, match="missing"):
        incomplete.compute()


def _ddp_worker(rank: int, world: int, port: int, sim: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    metric = RetrievalMetrics(captions_per_video=[2] * 8)
    index = torch.arange(rank, sim.shape[0], world)  # strided shards, like DistributedSampler
    metric.update(sim[index], index)
    result = metric.compute()
    if rank == 0:
        out.update({k: v.item() for k, v in result.items()})
    dist.destroy_process_group()


def test_metric_state_syncs_across_two_gloo_processes():
    torch.manual_seed(0)
    sim = torch.randn(16, 8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, sim, out), nprocs=2, join=True)
    expected = retrieval_metrics(sim, [2] * 8)
    assert out["t2v/R1"] == pytest.approx(expected["t2v"]["R1"])
    assert out["v2t/MnR"] == pytest.approx(expected["v2t"]["MnR"])
