"""The evaluation command end to end on tiny local models: DreamBench, COCO FID, layout."""

import json

import pytest
import torch

from training.eval import main
from training.evaluation.coco import load_captions


def test_dreambench_command(tiny_generator, tiny_dino, tiny_clip, dreambench_dir, tmp_path):
    ckpt, base = tiny_generator
    out = tmp_path / "db"
    main(["dreambench", "--checkpoint", str(ckpt), "--sd15", str(base), "--dreambench", str(dreambench_dir),
          "--dino", str(tiny_dino), "--clip", str(tiny_clip), "--out", str(out), "--subjects", "dog", "teapot",
          "--prompts", "1", "--samples", "2", "--steps", "2", "--resolution", "32", "--device", "cpu"])
    data = json.loads((out / "results.json").read_text())
    assert data["overall"]["images"] == 2 * 1 * 2
    assert set(data["per_subject"]) == {"dog", "teapot"}
    assert data["settings"]["steps"] == 2 and data["settings"]["scheduler"] == "dpmsolver++"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"][0]["input_prompt"] == "<i> in the jungle"
    assert manifest["images"][0]["scored_prompt"] == "a dog in the jungle"
    for name in ("results.md", "scores_per_subject.png", "samples_grid.png"):
        assert (out / name).stat().st_size > 0
    # re-scoring the same images gives the same numbers
    again = main(["dreambench", "--score-only", "--out", str(out), "--dino", str(tiny_dino), "--clip", str(tiny_clip),
                  "--device", "cpu"])
    assert again["overall"]["DINO"] == pytest.approx(data["overall"]["DINO"])


class _FakeInception(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 1].std(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))], dim=1)


def _coco_fixture(tmp_path, dreambench_dir):
    images = tmp_path / "val2014"
    images.mkdir()
    names = ["dog", "cat", "teapot", "vase", "can", "clock"]
    for i, n in enumerate(names):
        (images / f"COCO_val2014_{i:012d}.jpg").write_bytes((dreambench_dir / "images" / f"{n}.jpg").read_bytes())
    ann = {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(len(names))],
           "annotations": [{"image_id": i, "caption": f"a photo of a {n}"} for i, n in enumerate(names)]
           + [{"image_id": 0, "caption": "a dog on the grass"}]}
    captions = tmp_path / "captions_val2014.json"
    captions.write_text(json.dumps(ann))
    return captions, images


def test_coco_caption_selection_is_seeded(tmp_path, dreambench_dir):
    captions, _ = _coco_fixture(tmp_path, dreambench_dir)
    a = load_captions(captions, 4, seed=0)
    assert len(a) == 4 and len({it.image_id for it in a}) == 4
    assert a == load_captions(captions, 4, seed=0)


def test_coco_fid_command(tiny_generator, dreambench_dir, tmp_path, save_torchscript):
    ckpt, base = tiny_generator
    captions, images = _coco_fixture(tmp_path, dreambench_dir)
    model_path = tmp_path / "inception.pt"
    save_torchscript(_FakeInception(), model_path)
    out = tmp_path / "coco"
    res = main(["coco-fid", "--checkpoint", str(ckpt), "--sd15", str(base), "--captions", str(captions),
                "--images", str(images), "--count", "5", "--steps", "2", "--resolution", "32",
                "--feature-model", str(model_path), "--out", str(out), "--device", "cpu", "--batch", "3"])
    assert res["images"] == {"generated": 5, "real": 5}
    assert res["fid"] >= 0 and res["comparable_to_paper"] is True
    assert res["settings"]["scheduler"] == "ddim" and res["settings"]["guidance"] == 3.0
    assert len(list((out / "samples").glob("*.png"))) == 5
    assert "FID" in (out / "results.md").read_text()


def test_layout_command(tmp_path):
    scores = main(["layout", "--out", str(tmp_path), "--scenes", "4", "--size", "32"])
    assert "rule_based" in scores
    data = json.loads((tmp_path / "results.json").read_text())
    assert "miou" in data["scores"]["rule_based"]
    assert "miou" in (tmp_path / "results.md").read_text()
