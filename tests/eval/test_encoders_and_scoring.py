"""DINO / CLIP scorers with tiny random models saved to tmp_path, run on the real DreamBench images."""

import json

import pytest
import torch

from training.evaluation.dreambench import score, write_report
from training.evaluation.dreambench_protocol import load_dreambench
from training.evaluation.encoders import ClipEncoder, DinoEncoder
from training.evaluation.images import load_rgb


def test_dino_identical_image_scores_one(tiny_dino, dreambench_dir):
    enc = DinoEncoder(tiny_dino)
    dog = load_rgb(dreambench_dir / "images" / "dog.jpg")
    cat = load_rgb(dreambench_dir / "images" / "cat.jpg")
    feats = enc.encode([dog, dog, cat])
    assert feats.shape == (3, 32)
    assert float(feats[0] @ feats[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(feats[0] @ feats[2]) < 1.0


def test_clip_image_and_text_features(tiny_clip, dreambench_dir):
    enc = ClipEncoder(tiny_clip)
    img = load_rgb(dreambench_dir / "images" / "teapot.jpg")
    im = enc.encode_images([img, img])
    tx = enc.encode_texts(["a teapot in the snow", "a cube shaped teapot"])
    assert im.shape == (2, 16) and tx.shape == (2, 16)
    assert torch.allclose(im.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(im[0] @ im[1]) == pytest.approx(1.0, abs=1e-5)


def test_score_and_report_on_dreambench_images(tiny_dino, tiny_clip, dreambench_dir, tmp_path):
    subjects = load_dreambench(dreambench_dir, ["dog", "cat", "teapot"])
    entries = []
    # "Generated" images: each subject's own reference twice, plus another subject's image (a wrong generation).
    for i, s in enumerate(subjects):
        other = subjects[(i + 1) % len(subjects)]
        for k, src in enumerate([s.reference, s.reference, other.reference]):
            dst = tmp_path / "samples" / s.name / f"{k:02d}_0.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            load_rgb(src).save(dst)
            entries.append({"subject": s.name, "class": s.class_name, "prompt_index": k, "input_prompt":
                            s.prompts[k].kosmos, "scored_prompt": s.prompts[k].scored, "reference": str(s.reference),
                            "file": str(dst.relative_to(tmp_path))})
    results = score(entries, tmp_path, DinoEncoder(tiny_dino), ClipEncoder(tiny_clip))
    assert set(results["per_subject"]) == {"dog", "cat", "teapot"}
    for row in results["per_subject"].values():
        assert row["images"] == 3
        assert 0.0 <= row["CLIP-I"] <= 1.0 and 0.0 <= row["CLIP-T"] <= 1.0
        # two of three images are the reference itself: the mean is at least 2/3 of a perfect score
        assert row["DINO"] >= 2 / 3 - 1e-5
    files = write_report(results, entries, tmp_path, {"steps": 100})
    data = json.loads(files["json"].read_text())
    assert data["overall"]["images"] == 9
    md = files["markdown"].read_text()
    assert "| dog |" in md and "overall" in md and "DINO" in md
    assert files["chart"].stat().st_size > 1000 and files["grid"].stat().st_size > 1000


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DinoEncoder(tmp_path)
