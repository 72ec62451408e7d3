"""Fréchet distance against hand-computed values, and the TorchScript feature-extractor path."""

import numpy as np
import pytest
import torch
from PIL import Image

from training.evaluation.fid import (
    FeatureStats,
    InceptionFeatures,
    build_feature_extractor,
    fid_from_stats,
    frechet_distance,
    stats_of_images,
)


def test_one_dimensional_gaussians():
    # N(0, 1) vs N(3, 4): (0-3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([3.0]), np.array([[4.0]])) == pytest.approx(10)


def test_diagonal_covariances():
    # sum over dims of (mu diff)^2 + (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    s1, s2 = np.diag([4.0, 9.0]), np.diag([1.0, 1.0])
    expected = (1 + 4) + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_non_commuting_covariances_match_closed_form():
    # For 2x2 SPD matrices, Tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2 (positive eigenvalues).
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, rel=1e-9)


def test_same_features_give_zero_and_stats_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(200, 8))
    a = FeatureStats.from_features(feats)
    assert fid_from_stats(a, FeatureStats.from_features(feats.copy())) == pytest.approx(0.0, abs=1e-6)
    a.save(tmp_path / "s.npz")
    b = FeatureStats.load(tmp_path / "s.npz")
    assert b.count == 200 and np.allclose(a.sigma, b.sigma)
    shifted = FeatureStats.from_features(feats + 2.0)
    assert fid_from_stats(a, shifted) == pytest.approx(8 * 4.0, rel=1e-6)


def test_shape_mismatch_and_too_few_rows():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(np.zeros((1, 4)))


class _FakeInception(torch.nn.Module):
    """Same call signature as the FID Inception TorchScript: forward(x 0..255, return_features) -> (N, D)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0].std(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))], dim=1)


def test_inception_torchscript_extractor(tmp_path, save_torchscript):
    path = tmp_path / "inception.pt"
    save_torchscript(_FakeInception(), path)
    extractor = build_feature_extractor("inception", path)
    assert isinstance(extractor, InceptionFeatures)
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)) for _ in range(6)]
    assert extractor(imgs).shape == (6, 3)
    stats = stats_of_images(iter(imgs), extractor, batch_size=4)
    assert stats.count == 6 and stats.mu.shape == (3,)
    assert fid_from_stats(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_missing_extractor_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        build_feature_extractor("inception", tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="unknown FID feature extractor"):
        build_feature_extractor("vgg", tmp_path)
