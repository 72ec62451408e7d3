"""The toy world's scenes and its exact scorer: every subject and place is read back correctly."""

import io
import random

import pytest
from PIL import Image

from training.toy_world.scenes import (
    COLOURS,
    PLACES,
    SHAPES,
    Scene,
    Subject,
    all_subjects,
    random_scene,
    reference_image,
    render,
)
from training.toy_world.scorer import read_image, score_images


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_every_subject_and_place_is_read_back():
    rng = random.Random(0)
    jpeg_right = jpeg_total = 0
    for subject in all_subjects():
        for place in PLACES:
            scene = random_scene(rng, subject, place)
            for img in (render(scene, 32), render(scene, 64)):  # lossless: always exact
                r = read_image(img)
                assert (r.colour, r.shape, r.place) == (subject.colour, subject.shape, place), (scene, r)
            # JPEG at the shard size (chroma subsampling rounds square corners): nearly always exact
            r = read_image(_jpeg(render(scene, 64)))
            jpeg_right += (r.colour, r.shape, r.place) == (subject.colour, subject.shape, place)
            jpeg_total += 1
    assert jpeg_right / jpeg_total >= 0.97


def test_subject_count_and_caption_hides_appearance():
    assert len(all_subjects()) == len(SHAPES) * len(COLOURS) == 20
    scene = Scene(Subject("cross", "cyan"), "at night", 0.5, 0.5)
    assert scene.caption() == "a toy at night"
    assert scene.caption(describe=True) == "a cyan crossed toy at night"
    start, end = scene.entity_span()
    assert scene.caption()[start:end] == "toy"


def test_empty_background_has_no_subject():
    r = read_image(Image.new("RGB", (32, 32), PLACES["in the sea"]))
    assert r.place == "in the sea" and r.colour is None and r.shape is None


def test_score_images_known_values():
    subj = Subject("disc", "red")
    good = render(Scene(subj, "on the beach", 0.5, 0.5))
    wrong_shape = render(Scene(Subject("square", "red"), "on the beach", 0.5, 0.5))
    empty = Image.new("RGB", (32, 32), PLACES["in the snow"])
    s = score_images([good, wrong_shape, empty], [subj] * 3, ["on the beach"] * 3)
    assert s.colour_accuracy == pytest.approx(2 / 3)
    assert s.shape_accuracy == pytest.approx(1 / 3)
    assert s.subject_fidelity == pytest.approx(0.5)
    assert s.text_fidelity == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal"):
        score_images([good], [], [])


def test_reference_images_show_the_subject():
    for subject in all_subjects():
        for cutout in (False, True):
            ref = reference_image(subject, size=64, cutout=cutout)
            assert ref.size == (64, 64)
            r = read_image(ref.resize((32, 32)))
            assert r.colour == subject.colour
