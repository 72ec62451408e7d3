"""The diagnostics' formulas, pinned on models whose answer is known."""

from types import SimpleNamespace

import pytest
import torch

from training.toy_world.base_model import SHIPPED_BASE, load_base_text
from training.toy_world.diagnose import pair_caption_alignment


class _TextAsConditioning:
    """A 'KOSMOS-G' whose conditioning is the base text encoder's own output, optionally for the caption with the
    two subjects swapped: the perfect aligner, and one that routes every subject to the other side."""

    def __init__(self, base_text, swap: bool = False):
        self.base_text, self.swap = base_text, swap

    def encode(self, captions: list[str]) -> SimpleNamespace:
        if self.swap:
            captions = [_swap(c) for c in captions]
        return SimpleNamespace(cond=self.base_text.encode(captions)[0])


def _swap(caption: str) -> str:
    """'a red round toy next to a cyan square block on the beach' -> 'a cyan square toy next to a red round block ...'"""
    first, rest = caption[len("a "):].split(" toy next to a ", 1)
    second, place = rest.split(" block ", 1)
    return f"a {second} toy next to a {first} block {place}"


@pytest.fixture(scope="module")
def base_text():
    return load_base_text(SHIPPED_BASE)


@torch.no_grad()
def test_pair_caption_alignment_of_a_perfect_and_a_swapping_aligner(base_text):
    perfect = pair_caption_alignment(_TextAsConditioning(base_text), base_text, pairs=20)
    assert perfect["mse"] < 1e-6 and perfect["order"] == 1.0 and perfect["order_spread"] == pytest.approx(1.0)
    swapping = pair_caption_alignment(_TextAsConditioning(base_text, swap=True), base_text, pairs=20)
    assert swapping["mse"] > 0.1 and swapping["order"] == 0.0 and swapping["order_spread"] == pytest.approx(1.0)
