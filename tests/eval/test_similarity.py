"""The DreamBench similarity scores on constructed features with known answers."""

import pytest
import torch
import torch.nn.functional as F

from training.evaluation.similarity import image_similarity, pairwise_cosine, text_similarity


def test_identical_features_score_one():
    feats = F.normalize(torch.randn(5, 16), dim=-1)
    assert image_similarity(feats[:1].repeat(4, 1), feats[:1], clip_at_zero=False) == pytest.approx(1.0)
    assert text_similarity(feats, feats) == pytest.approx(1.0)


def test_orthogonal_features_score_zero():
    eye = torch.eye(4)
    assert image_similarity(eye[:2], eye[2:], clip_at_zero=True) == pytest.approx(0.0)
    assert text_similarity(eye[:2], eye[2:]) == pytest.approx(0.0)


def test_negative_cosines_clip_at_zero_only_for_clip_scores():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[-1.0, 0.0]])
    assert image_similarity(a, b, clip_at_zero=False) == pytest.approx(-1.0)  # DINO keeps the sign
    assert image_similarity(a, b, clip_at_zero=True) == 0.0
    assert text_similarity(a, b) == 0.0


def test_mean_over_all_pairs():
    gen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[1.0, 0.0]])
    assert pairwise_cosine(gen, ref).flatten().tolist() == [1.0, 0.0]
    assert image_similarity(gen, ref, clip_at_zero=False) == pytest.approx(0.5)


def test_mismatched_shapes_are_errors():
    with pytest.raises(ValueError, match="feature sizes"):
        pairwise_cosine(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="one prompt per image"):
        text_similarity(torch.zeros(2, 3), torch.zeros(1, 3))
