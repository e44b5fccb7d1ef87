"""The X-CLIP head on SigLIP / SigLIP 2 encoders: tiny random SigLIP models built here and loaded through the real
``from_pretrained`` path; their features are transformers' own ``get_text_features`` / ``get_image_features``, the
frames are preprocessed as SigLIP's image processor does, and fit / test / export / index / search run on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel

from conftest import CAPTIONS, REPO
from xclip_lightning.cli import main
from xclip_lightning.data.synthetic import make_synthetic_dataset
from xclip_lightning.inputs.transforms import normalize, resizer
from xclip_lightning.lightning_module import XCLIPRetrieval
from xclip_lightning.model.encoders import BackboneError, SiglipEncoders
from xclip_lightning.model.tiny import build_tiny_siglip
from xclip_lightning.model.xclip import XCLIP

KINDS = {"siglip": False, "siglip2": True}  # SigLIP's tokenizer layout, SigLIP 2's Gemma tokenizer


@pytest.fixture(scope="module", params=sorted(KINDS))
def siglip(request, tmp_path_factory) -> Path:
    corpus = [*CAPTIONS, "a man is playing a guitar", "someone walks in"] * 4
    return build_tiny_siglip(tmp_path_factory.mktemp(request.param), corpus, seed=0, gemma=KINDS[request.param])


def test_features_are_siglips_own(siglip):
    model = XCLIP.from_clip(str(siglip), max_words=64, max_frames=3).eval()
    assert isinstance(model.encoders, SiglipEncoders)
    reference = SiglipModel.from_pretrained(siglip).eval()
    tokenizer = AutoTokenizer.from_pretrained(siglip)
    captions = ["A dog runs across the grass", "a man"]
    tokens = model.tokenize(captions)
    lowered = [c.lower() for c in captions] if "gemma" in type(tokenizer).__name__.lower() else captions
    direct = tokenizer(lowered, padding="max_length", max_length=64, return_tensors="pt")  # SigLIP's own use
    assert torch.equal(tokens.input_ids, direct["input_ids"])
    frames = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        sentence, words = model.encoders.encode_text(tokens.input_ids, tokens.word_mask)
        expected = reference.get_text_features(input_ids=direct["input_ids"])
        torch.testing.assert_close(sentence, getattr(expected, "pooler_output", expected))
        assert words.shape == (2, 64, 64)
        features = model.encode_frames(frames, mask)
        pixels = (frames[mask].float() / 255 - 0.5) / 0.5  # mean = std = 0.5
        image = reference.get_image_features(pixel_values=pixels)
        torch.testing.assert_close(features[mask], getattr(image, "pooler_output", image))
        model.score_matrix(model.encode_text(*tokens), model.encode_video(frames, mask))  # the whole head runs


def test_word_mask_marks_the_captions_own_tokens(siglip):
    model = XCLIP.from_clip(str(siglip), max_words=16, max_frames=3)
    tokens = model.tokenize(["a man", "someone walks in and the girl jumps " * 4])
    pad = model.tokenizer.pad_token_id
    for ids, mask in zip(tokens.input_ids, tokens.word_mask, strict=True):
        assert bool((ids[~mask] == pad).all())
        if model.tokenizer.eos_token == "</s>":  # SigLIP: pieces then </s>, padded on the right with </s>
            assert ids[mask][-1] == model.tokenizer.eos_token_id and bool(mask[: int(mask.sum())].all())
    assert bool(tokens.word_mask[1].all())  # the long caption is truncated to the 16 slots


def test_frames_are_preprocessed_as_siglips_image_processor_does():
    rng = np.random.default_rng(0)
    frame = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # 48x64, not square
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    expected = processor(images=Image.fromarray(frame), return_tensors="pt")["pixel_values"][0]
    ours = normalize(resizer(32, "squash")(torch.from_numpy(frame).permute(2, 0, 1)), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert ours.shape == expected.shape == (3, 32, 32)  # the whole frame, squashed: nothing cropped
    assert (ours - expected).abs().mean() < 0.01 and (ours - expected).abs().max() < 0.1  # bicubic: PIL vs torch


def test_save_load_and_the_checkpoint_spec_keep_the_backbone(siglip, tmp_path):
    torch.manual_seed(0)
    model = XCLIP.from_clip(str(siglip), max_words=16, max_frames=3).eval()
    tokens = model.tokenize(["a dog runs"])
    frames = torch.randint(0, 256, (1, 3, 3, 32, 32), dtype=torch.uint8)
    mask = torch.ones(1, 3, dtype=torch.bool)

    def score(m: XCLIP) -> torch.Tensor:
        with torch.no_grad():
            return m.score_matrix(m.encode_text(*tokens), m.encode_video(frames, mask))

    loaded = XCLIP.from_pretrained(model.save_pretrained(tmp_path / "saved")).eval()
    assert isinstance(loaded.encoders, SiglipEncoders) and torch.equal(score(loaded), score(model))
    rebuilt = XCLIP.from_clip("unused", max_words=16, max_frames=3, clip_spec=model.clip_spec())
    rebuilt.load_state_dict(model.state_dict())
    assert isinstance(rebuilt.encoders, SiglipEncoders) and torch.equal(score(rebuilt.eval()), score(model))
    assert torch.equal(rebuilt.tokenize(["a dog runs"]).input_ids, tokens.input_ids)


def test_logit_scale_is_siglips_own_and_not_clamped(siglip):
    module = XCLIPRetrieval(str(siglip), max_words=16, max_frames=3)
    with torch.no_grad():
        module.model.encoders.clip.logit_scale.fill_(5.0)  # SigLIP's trained value is about ln(112) = 4.7
    module.on_train_batch_end(None, None, 0)
    assert module.model.encoders.clip.logit_scale.item() == 5.0


def test_a_siglip2_naflex_folder_is_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    with pytest.raises(BackboneError, match="NaFlex"):
        XCLIP.from_clip(str(tmp_path))


@pytest.mark.slow
def test_fit_test_export_index_and_search_on_siglip(siglip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    annotations = make_synthetic_dataset(tmp_path / "data", train=8, val=3, test=3, seed=5)
    cache = tmp_path / "cache"
    args = [
        "--config", str(REPO / "configs" / "synthetic.yaml"), f"--model.clip_name_or_path={siglip}",
        "--model.max_frames=3", f"--data.annotations={annotations}", f"--data.videos={annotations.parent}",
        f"--data.cache_dir={cache}", "--data.batch_size=4", "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    main(["fit", *args, "--trainer.max_epochs=1"])
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert [p.name.split("-v3")[0] for p in cache.iterdir()] == ["fps1-frames3-timestamp-32px-squash"]
    main(["test", *args, f"--ckpt_path={ckpt}"])
    main(["export", "--ckpt-path", str(ckpt), "--out", str(tmp_path / "model")])
    exported = XCLIP.from_pretrained(tmp_path / "model")
    assert isinstance(exported.encoders, SiglipEncoders)
    capsys.readouterr()
    for model in (tmp_path / "model", siglip):  # the trained model, and SigLIP itself zero-shot
        index = tmp_path / f"{Path(model).name}.xindex"
        main(["index", "--model", str(model), "--videos", str(annotations.parent / "videos"), "--out", str(index)])
        capsys.readouterr()
        main(["search", "--index", str(index), "a red circle", "--top-k", "3", "--json"])
        (answer,) = json.loads(capsys.readouterr().out)
        assert len(answer["results"]) == 3 and all(str(h["path"]).endswith(".mp4") for h in answer["results"])
