"""Fréchet distance between two sets of image features, and the feature extractors it can use.

No FID library installs here without torchvision (clean-fid, pytorch-fid and torch-fidelity all require it;
torchmetrics' FID needs torch-fidelity for its Inception), and all of them download Inception weights at run time.
So the distance is computed here (float64, scipy `sqrtm`, the standard formula) on features from a LOCAL extractor:

* `inception`: the TorchScript FID Inception-v3 `inception-2015-12-05.pt` that clean-fid and StyleGAN2-ADA use
  (the port of the TF-FID graph). Called as `model(x, return_features=True)` on float images in 0..255, 299x299,
  resized with PIL bicubic (clean-fid's "clean" resize) -> 2048-d pool features. These are the standard FID features;
  remaining differences to the paper (which does not state its library) are the resize filter and JPEG handling.
* `clip`: the image embedding of a transformers CLIP folder (FD_CLIP). NOT comparable to any published FID.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from training.cli import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> FeatureStats:
        feats = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"need at least 2 feature rows (N, D) for a covariance, got shape {feats.shape}")
        return cls(feats.mean(0), np.cov(feats, rowvar=False), feats.shape[0])

    def save(self, path: str | Path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, count=self.count)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with np.load(path) as d:
            return cls(d["mu"], d["sigma"], int(d["count"]))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product (few samples): regularise both covariances, as the reference implementations do.
        log.warning("sqrtm of the covariance product is singular; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part: {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


class InceptionFeatures:
    """The TorchScript FID Inception (inception-2015-12-05.pt) from a local file -> (N, 2048)."""

    name = "inception"
    size = 299

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"FID Inception TorchScript file not found: {path} (expected inception-2015-12-05.pt, "
                "the file clean-fid / StyleGAN2-ADA use; see docs/evaluation.md)"
            )
        # TorchScript archive, not a pickle: torch.jit.load runs no Python code from the file. The FID-standard
        # Inception exists only as TorchScript, so torch's deprecation of torch.jit is silenced here, for this call.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BICUBIC), np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)  # (N,3,299,299) in 0..255
        return self.model(x, return_features=True).reshape(len(images), -1).float().cpu()


class ClipFeatures:
    """FD_CLIP: CLIP image embeddings from a local transformers CLIP folder -> (N, D). Not comparable to FID."""

    name = "clip"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from .encoders import ClipEncoder

        self.encoder = ClipEncoder(path, device=device)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.encoder.encode_images(images)


def build_feature_extractor(kind: str, path: str | Path, device: str | torch.device = "cpu"):
    if kind == "inception":
        return InceptionFeatures(path, device)
    if kind == "clip":
        return ClipFeatures(path, device)
    raise ValueError(f"unknown FID feature extractor {kind!r}; use 'inception' or 'clip'")


def stats_of_images(images: Iterable[Image.Image], extractor, batch_size: int = 50, total: int | None = None,
                    desc: str = "FID features (images)") -> FeatureStats:
    """Feature statistics of a stream of PIL images (`total` of them, for the progress display), in batches."""
    feats: list[torch.Tensor] = []
    batch: list[Image.Image] = []
    for img in progress(images, total=total, desc=desc):
        batch.append(img)
        if len(batch) == batch_size:
            feats.append(extractor(batch))
            batch = []
    if batch:
        feats.append(extractor(batch))
    if not feats:
        raise ValueError("no images to compute FID statistics from")
    return FeatureStats.from_features(torch.cat(feats))
