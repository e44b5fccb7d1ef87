"""Evaluation that cannot leak, through the real ``Trainer.test`` loop: the metrics do not change when the test
videos (and so their captions) come in another order; a model that scores at random gets chance numbers; dual-softmax
re-ranking (``eval_dsl``) is logged under its own names and never changes the plain metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch

from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.inputs.tokenize import tokenize
from xclip_lightning.lightning_module import XCLIPRetrieval
from xclip_lightning.metrics import retrieval_metrics

WORDS, FRAMES, TEST_VIDEOS = 32, 4, 60


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("leaks")
    annotations = make_synthetic_dataset(root / "data", train=2, val=2, test=TEST_VIDEOS, seed=13)
    clip = make_synthetic_clip(root / "clip", annotations)
    return annotations, clip, root / "cache"


def evaluate(data, annotations: Path, **options) -> tuple[dict[str, float], XCLIPRetrieval, VideoTextDataModule]:
    """``Trainer.test`` of a freshly initialised model (seeded) on ``annotations``' test split: its metrics."""
    _, clip, cache = data
    dm = VideoTextDataModule(
        annotations=str(annotations), videos=str(data[0].parent), clip_name_or_path=str(clip), batch_size=4,
        eval_batch_size=16, num_workers=0, max_words=WORDS, max_frames=FRAMES, cache_dir=str(cache),
    )  # fmt: skip
    torch.manual_seed(0)
    module = XCLIPRetrieval(str(clip), max_words=WORDS, max_frames=FRAMES, **options)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(module, dm, verbose=False)[0], module, dm


def permuted(annotations: Path, target: Path, seed: int) -> Path:
    """The same annotations with the test videos in another order (each keeps its captions, in another order)."""
    lines = [json.loads(line) for line in annotations.read_text().splitlines()]
    tests = [line for line in lines if line["split"] == "test"]
    rng = random.Random(seed)
    rng.shuffle(tests)
    for line in tests:
        rng.shuffle(line["captions"])
    target.write_text("\n".join(json.dumps(line) for line in [*(x for x in lines if x["split"] != "test"), *tests]))
    return target


def test_the_metrics_do_not_depend_on_the_order_of_videos_or_captions(data, tmp_path):
    annotations = data[0]
    plain, _, _ = evaluate(data, annotations)
    assert plain["test/t2v_R1"] < 6 and 20 <= plain["test/t2v_MdR"] <= 42  # untrained: chance (1.7%, 30.5)
    for seed in (1, 2):
        shuffled, _, _ = evaluate(data, permuted(annotations, annotations.parent / f"shuffled{seed}.jsonl", seed))
        assert shuffled.keys() == plain.keys()
        for key, value in plain.items():
            assert shuffled[key] == pytest.approx(value, abs=1e-9), key


def test_a_model_that_scores_at_random_gets_chance_numbers(data, monkeypatch):
    """Random scores for every (caption, video): 120 captions against 60 videos, so chance R@1 is 1.7% and the
    median rank 30.5; any ground truth reaching the scoring would show here."""
    generator = torch.Generator().manual_seed(0)

    def random_scores(self, text, video, *args, **kwargs):
        return torch.rand(text.sentence.shape[0], video.video.shape[0], generator=generator)

    monkeypatch.setattr("xclip_lightning.model.xclip.XCLIP.score_matrix", random_scores)
    metrics, _, _ = evaluate(data, data[0])
    assert metrics["test/t2v_R1"] < 6 and metrics["test/v2t_R1"] < 12  # chance: 1.7% and (2 captions) 3.3%
    assert 20 <= metrics["test/t2v_MdR"] <= 42 and 20 <= metrics["test/t2v_MnR"] <= 42


def test_dual_softmax_is_logged_apart_and_leaves_the_plain_metrics_alone(data):
    plain, _, _ = evaluate(data, data[0])
    both, module, dm = evaluate(data, data[0], eval_dsl=True)
    assert {k: v for k, v in both.items() if not k.endswith("_dsl")} == plain
    assert {k.removesuffix("_dsl") for k in both if k.endswith("_dsl")} == set(plain)
    dm.setup("test")
    captions, videos = dm.test_dataloader()
    with torch.no_grad():  # the whole matrix, encoded and scored directly, then the metrics' own DSL
        text = [module.model.encode_text(b["input_ids"], b["word_mask"]) for b in captions]
        video = [module.model.encode_video(b["frames"], b["frame_mask"]) for b in videos if b]
        t, v = ([torch.cat(p) for p in zip(*parts, strict=True)] for parts in (text, video))
        sim = module.model.score_matrix(type(text[0])(*t), type(video[0])(*v))
    expected = retrieval_metrics(sim, [2] * TEST_VIDEOS, dsl=True)
    for direction in ("t2v", "v2t"):
        for name, value in expected[f"{direction}_dsl"].items():
            assert both[f"test/{direction}_{name}_dsl"] == pytest.approx(value, abs=1e-4), (direction, name)


def test_distractor_videos_through_the_test_loop(data, tmp_path):
    """More videos than texts: 10 of the 60 test videos lose their captions (``"captions": []``) and stay in the
    gallery. Texts now rank 60 videos, videos still rank the 50 caption groups: the loop's numbers equal a
    query-by-query computation on the directly encoded matrix, and video->text is that of the run without them."""
    from test_metrics import slow_metrics

    lines = [json.loads(line) for line in data[0].read_text().splitlines()]
    distractors = [line for line in lines if line["split"] == "test"][-10:]
    for line in distractors:
        line["captions"] = []
    with_them, without = tmp_path / "distractors.jsonl", tmp_path / "without.jsonl"
    with_them.write_text("\n".join(json.dumps(line) for line in lines))
    without.write_text("\n".join(json.dumps(line) for line in lines if line not in distractors))
    plain, _, _ = evaluate(data, without)
    metrics, module, dm = evaluate(data, with_them)
    assert {k: v for k, v in metrics.items() if "v2t" in k} == {k: v for k, v in plain.items() if "v2t" in k}
    dm.setup("test")
    captions, videos = dm.test_dataloader()
    with torch.no_grad():
        text = [module.model.encode_text(b["input_ids"], b["word_mask"]) for b in captions]
        video = [module.model.encode_video(b["frames"], b["frame_mask"]) for b in videos if b]
        t, v = ([torch.cat(p) for p in zip(*parts, strict=True)] for parts in (text, video))
        sim = module.model.score_matrix(type(text[0])(*t), type(video[0])(*v)).double().numpy()
    assert sim.shape == (100, 60)
    expected = slow_metrics(sim, [2] * 50 + [0] * 10)
    for direction in ("t2v", "v2t"):
        for name, value in expected[direction].items():
            assert metrics[f"test/{direction}_{name}"] == pytest.approx(value, abs=1e-6), (direction, name)
    assert metrics["test/t2v_MnR"] >= plain["test/t2v_MnR"]  # a larger gallery never helps the texts


def test_a_training_video_needs_a_caption(data, tmp_path):
    from xclip_lightning.data.benchmarks import READERS
    from xclip_lightning.data.benchmarks.common import AnnotationError

    lines = [json.loads(line) for line in data[0].read_text().splitlines()]
    lines[0]["captions"] = []
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(AnnotationError, match=r"a\.jsonl:1: .*distractor video"):
        READERS["generic"](tmp_path / "a.jsonl", data[0].parent, "train")


def test_querybank_normalisation_is_logged_apart_with_a_bank_of_training_captions(data):
    plain, _, _ = evaluate(data, data[0])
    both, module, dm = evaluate(data, data[0], eval_qb_norm=True)
    assert {k: v for k, v in both.items() if not k.endswith("_qb")} == plain
    assert {k for k in both if k.endswith("_qb")} == {f"test/t2v_{n}_qb" for n in ("R1", "R5", "R10", "MdR", "MnR")}
    train = [c for r in dm.records("train") for c in r.captions]
    test = {c for r in dm.records("test") for c in r.captions}
    assert len(module._bank_tokens.input_ids) == len(train) and not test & set(train)  # never the queries
    dm.setup("test")
    captions, videos = dm.test_dataloader()
    with torch.no_grad():  # the whole matrix and the bank's rows, encoded and scored directly
        text = [module.model.encode_text(b["input_ids"], b["word_mask"]) for b in captions]
        video = [module.model.encode_video(b["frames"], b["frame_mask"]) for b in videos if b]
        t, v = ([torch.cat(p) for p in zip(*parts, strict=True)] for parts in (text, video))
        video_features = type(video[0])(*v)
        sim = module.model.score_matrix(type(text[0])(*t), video_features)
        ids, mask = tokenize(module.model.tokenizer, train, WORDS)
        bank_text = module.model.encode_text(ids, mask)
        bank = module.model.score_matrix(type(text[0])(bank_text.sentence, bank_text.words, mask), video_features)
    expected = retrieval_metrics(sim, [2] * TEST_VIDEOS, querybank=bank)["t2v_qb"]
    for name, value in expected.items():
        assert both[f"test/t2v_{name}_qb"] == pytest.approx(value, abs=1e-4), name
