"""Hard-edged shape rasterisation on a pixel grid (no anti-aliasing: a pixel is inside or not).

Coordinates are normalised to [0,1] (x right, y down) so one plan renders identically at any resolution; a pixel is
inside when its centre is. Every function returns an (H,W) bool mask.
"""

from __future__ import annotations

import numpy as np


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys (H,1), xs (1,W)) in [0,1]."""
    ys = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    return ys, xs


def rect(h: int, w: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    ys, xs = grid(h, w)
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    ys, xs = grid(h, w)
    return ((xs - cx) / max(rx, 1e-6)) ** 2 + ((ys - cy) / max(ry, 1e-6)) ** 2 <= 1.0


def rounded_rect(h: int, w: int, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    """Axis-aligned box with corners rounded by radius r (normalised, clipped to half the box)."""
    r = max(0.0, min(r, (x1 - x0) / 2, (y1 - y0) / 2))
    ys, xs = grid(h, w)
    cx = np.clip(xs, x0 + r, x1 - r)
    cy = np.clip(ys, y0 + r, y1 - r)
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return inside & (((xs - cx) ** 2 + (ys - cy) ** 2) <= r * r + 1e-12)


def polygon(h: int, w: int, points: list[tuple[float, float]]) -> np.ndarray:
    """Filled polygon by the even-odd rule on pixel centres."""
    ys, xs = grid(h, w)
    xs = np.broadcast_to(xs, (h, w))
    ys = np.broadcast_to(ys, (h, w))
    inside = np.zeros((h, w), dtype=bool)
    n = len(points)
    for k in range(n):
        (xa, ya), (xb, yb) = points[k], points[(k + 1) % n]
        if ya == yb:
            continue
        crosses = (ya > ys) != (yb > ys)
        x_at = xa + (ys - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (xs < x_at)
    return inside


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, by shifting (no scipy needed)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            # out[y + dy, x + dx] |= mask[y, x]
            src = mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] |= src
    return out
