"""Evaluation resumes (issue 12, point 11): images already made are kept, the missing ones are made again, and the
result equals an uninterrupted run's byte for byte; other settings into the same folder are refused; every long
loop reports progress."""

from __future__ import annotations

import json
import logging

import pytest

from training.eval import main


def _dreambench(ckpt, base, dreambench_dir, dino, out, subjects=("dog", "teapot"), steps=2):
    return main(["dreambench", "--checkpoint", str(ckpt), "--sd15", str(base), "--dreambench", str(dreambench_dir),
                 "--dino", str(dino), "--out", str(out), "--subjects", *subjects, "--prompts", "2", "--samples", "2",
                 "--steps", str(steps), "--resolution", "32", "--device", "cpu"])


def _images(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "samples").rglob("*.png"))}


def test_dreambench_resumes_to_the_uninterrupted_result(tiny_generator, tiny_dino, dreambench_dir, tmp_path, caplog):
    ckpt, base = tiny_generator
    whole = tmp_path / "whole"
    with caplog.at_level(logging.INFO):
        first = _dreambench(ckpt, base, dreambench_dir, tiny_dino, whole)
    assert "DreamBench generation (subject, prompt): 4/4" in caplog.text  # progress, also without a terminal
    assert "DreamBench scoring (subjects): 2/2" in caplog.text
    reference = _images(whole)
    assert len(reference) == 2 * 2 * 2

    # An interrupted run: one (subject, prompt) lost an image, another never started, and a write was cut short.
    (whole / "samples" / "dog" / "01_1.png").unlink()
    (whole / "samples" / "teapot" / "00_0.png").unlink()
    (whole / "samples" / "teapot" / "00_1.png").unlink()
    (whole / "samples" / "teapot" / "00_0.png.part").write_bytes(b"half an image")
    kept = {p: p.stat().st_mtime_ns for p in (whole / "samples").rglob("*.png")}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = _dreambench(ckpt, base, dreambench_dir, tiny_dino, whole)
    assert "2 (subject, prompt) pairs generated, 2 already in" in caplog.text
    assert _images(whole) == reference
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished images were made again"
    assert again["overall"]["DINO"] == pytest.approx(first["overall"]["DINO"])

    # A subset of subjects, in another order, gives the same images: the noise follows the subject, not its position.
    alone = tmp_path / "alone"
    _dreambench(ckpt, base, dreambench_dir, tiny_dino, alone, subjects=("teapot",))
    assert _images(alone) == {k: v for k, v in reference.items() if "/teapot/" in k}


def test_resuming_with_other_settings_is_refused(tiny_generator, tiny_dino, dreambench_dir, tmp_path):
    ckpt, base = tiny_generator
    _dreambench(ckpt, base, dreambench_dir, tiny_dino, tmp_path, subjects=("dog",))
    with pytest.raises(ValueError, match=r"generation\.json.*steps"):
        _dreambench(ckpt, base, dreambench_dir, tiny_dino, tmp_path, subjects=("dog",), steps=3)


def test_coco_generation_resumes_to_the_uninterrupted_result(tiny_generator, dreambench_dir, tmp_path, caplog,
                                                              save_torchscript):
    import torch

    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 1].std(dim=(1, 2))], dim=1)

    ckpt, base = tiny_generator
    images = tmp_path / "val2014"
    images.mkdir()
    names = ["dog", "cat", "teapot", "vase", "can"]
    for i, n in enumerate(names):
        (images / f"{i}.jpg").write_bytes((dreambench_dir / "images" / f"{n}.jpg").read_bytes())
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(5)],
                                    "annotations": [{"image_id": i, "caption": f"a {n}"} for i, n in enumerate(names)]}))
    save_torchscript(Features(), tmp_path / "features.pt")
    out = tmp_path / "coco"
    argv = ["coco-fid", "--checkpoint", str(ckpt), "--sd15", str(base), "--captions", str(captions), "--images",
            str(images), "--count", "5", "--steps", "2", "--resolution", "32", "--feature-model",
            str(tmp_path / "features.pt"), "--out", str(out), "--device", "cpu", "--batch", "2"]
    with caplog.at_level(logging.INFO):
        first = main(argv)
    assert "COCO generation (batches of 2): 3/3" in caplog.text
    assert "FID features, real images: 5/5" in caplog.text
    reference = _images(out)
    (out / "samples" / "00003.png").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = main(argv)
    assert "COCO: 1 batches generated, 2 already in" in caplog.text
    assert _images(out) == reference and again["fid"] == pytest.approx(first["fid"])
