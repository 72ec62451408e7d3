"""The toy world's scenes and its exact scorer: every subject and place is read back correctly."""

import io
import random

import numpy as np
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
    assert scene.caption(describe=True, attributes=("colour",)) == "a cyan toy at night"
    assert scene.caption(describe=True, attributes=("shape",)) == "a crossed toy at night"
    with pytest.raises(ValueError, match="expected one of"):
        scene.caption(describe=True, attributes=("size",))
    [(name, start, end)] = scene.entity_spans()
    assert scene.caption()[start:end] == name == "toy"


def test_two_subject_scene_caption_spans_and_prompts():
    from training.toy_world.evaluate import image_prompt, text_prompt
    from training.toy_world.scenes import PairScene

    scene = PairScene(Subject("cross", "cyan"), Subject("disc", "red"), "on the beach")
    assert scene.caption() == text_prompt(scene) == "a toy next to a block on the beach"
    assert scene.caption(describe=True) == "a cyan crossed toy next to a red round block on the beach"
    assert scene.caption(describe=True, attributes=("colour", "shape")) == "a cyan toy next to a round block on the beach"
    assert [scene.caption()[a:b] for _, a, b in scene.entity_spans()] == ["toy", "block"]
    assert image_prompt(scene) == "a <i> next to a <i> on the beach"
    assert image_prompt(Scene(Subject("cross", "cyan"), "at night", 0.5, 0.5)) == "a <i> at night"
    # the official entity walk (training/data/entities.py) keeps both names and drops them as the prompt does
    from training.data.entities import place_entities

    slots, rest = place_entities(scene.caption(), ["toy", "block"], drop_words=True)
    assert [slot.text for slot in slots] + [rest] == ["a ", " next to a ", " on the beach"]


def test_every_two_subject_scene_is_read_back_side_by_side():
    from training.toy_world.scenes import random_pair_scene
    from training.toy_world.scorer import read_pair

    rng = random.Random(0)
    right = jpeg_right = total = 0
    for _ in range(300):
        scene = random_pair_scene(rng)
        wanted = [(s.colour, s.shape) for s in scene.subjects]
        readings = read_pair(render(scene, 32))
        right += [(r.colour, r.shape) for r in readings] == wanted and readings[0].place == scene.place
        readings = read_pair(_jpeg(render(scene, 64)))
        jpeg_right += [(r.colour, r.shape) for r in readings] == wanted
        total += 1
    assert right == total
    assert jpeg_right / total >= 0.95  # 12 px subjects after JPEG and a 64 -> 32 px resize


def test_score_pairs_counts_a_subject_only_on_its_side():
    from training.toy_world.evaluate import two_entity_scores
    from training.toy_world.scenes import PairScene
    from training.toy_world.scorer import score_pairs

    a, b = Subject("disc", "red"), Subject("triangle", "cyan")
    scene = PairScene(a, b, "on the grass")
    good, swapped = render(scene), render(PairScene(b, a, "on the grass"))
    half_right = render(PairScene(a, Subject("square", "cyan"), "on the grass"))
    s = score_pairs([good, swapped, half_right], [(a, b)] * 3, ["on the grass"] * 3)
    assert s.entity_exact == pytest.approx(3 / 6) and s.both_exact == pytest.approx(1 / 3)
    assert s.colour_accuracy == pytest.approx(4 / 6) and s.shape_accuracy == pytest.approx(3 / 6)
    assert s.entity_fidelity == pytest.approx(7 / 12) and s.text_fidelity == 1.0
    scores = two_entity_scores([good, swapped], [scene, scene])
    assert scores["entity_exact"] == scores["swapped_entity_exact"] == 0.5
    assert scores["seen_pairs_images"] == 0 and scores["held_out_pairs_images"] == 2  # the red disc is held out
    with pytest.raises(ValueError, match="equal"):
        score_pairs([good], [], [])


def test_empty_background_has_no_subject():
    r = read_image(Image.new("RGB", (32, 32), PLACES["in the sea"]))
    assert r.place == "in the sea" and r.colour is None and r.shape is None


def test_score_images_known_values():
    subj = Subject("disc", "red")
    good = render(Scene(subj, "on the beach", 0.5, 0.5))
    wrong_shape = render(Scene(Subject("square", "red"), "on the beach", 0.5, 0.5))
    wrong_colour = render(Scene(Subject("disc", "cyan"), "on the beach", 0.5, 0.5))
    empty = Image.new("RGB", (32, 32), PLACES["in the snow"])
    s = score_images([good, wrong_shape, wrong_colour, empty], [subj] * 4, ["on the beach"] * 4)
    assert s.colour_accuracy == pytest.approx(2 / 4)
    assert s.shape_accuracy == pytest.approx(2 / 4)
    assert s.subject_fidelity == pytest.approx(0.5)
    # one image has both right: a wrong shape and a wrong colour make fidelity 0.5 but are not the subject
    assert s.subject_exact == pytest.approx(1 / 4)
    assert s.text_fidelity == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="equal"):
        score_images([good], [], [])


def test_reference_images_show_the_subject():
    for subject in all_subjects():
        for cutout in (False, True):
            ref = reference_image(subject, size=64, cutout=cutout)
            assert ref.size == (64, 64)
            r = read_image(ref.resize((32, 32)))
            assert r.colour == subject.colour


def test_held_out_subjects_are_new_combinations_of_seen_attributes():
    from training.toy_world.scenes import held_out_subjects, seen_subjects

    held, seen = held_out_subjects(), seen_subjects()
    assert len(held) == 5 and len(seen) == 15 and not set(held) & set(seen)
    assert {s.colour for s in held} == set(COLOURS) and {s.shape for s in held} == set(SHAPES)
    for subject in held:  # its colour and its shape are each seen, in other subjects
        assert any(s.colour == subject.colour for s in seen) and any(s.shape == subject.shape for s in seen)


def test_no_kosmos_g_training_shard_shows_a_held_out_subject(tmp_path):
    """Stage 1's captions name every subject they show; the references and the stage 2/3 scenes are checked by
    reading their pictures back with the scorer."""
    import json
    import tarfile

    from training.toy_world.scenes import CLASS_WORD, SECOND_CLASS_WORD, held_out_subjects
    from training.toy_world.scorer import read_pair
    from training.toy_world.shards import (
        write_caption_shards,
        write_compositional_shards,
        write_reference_shards,
    )

    held = {s.description() for s in held_out_subjects()}
    held_names = {(s.colour, s.shape) for s in held_out_subjects()}
    paths = [*write_caption_shards(tmp_path / "c", 200, 0, describe_prob=1.0),
             *write_reference_shards(tmp_path / "r", 200, 0), *write_compositional_shards(tmp_path / "p", 200, 0)]
    shown = pairs = 0
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".txt"):
                text = data.decode()
                assert not any(f"{d} {word}" in text for d in held for word in (CLASS_WORD, SECOND_CLASS_WORD)), text
            elif name.endswith(".jpg") and ".ent" not in name and "/r" not in path.as_posix():
                stem = name[: -len(".jpg")]
                caption = (members[f"{stem}.txt"].decode() if f"{stem}.txt" in members
                           else json.loads(members[f"{stem}.json"])["caption"])
                image = Image.open(io.BytesIO(data))
                readings = read_pair(image) if "next to" in caption else [read_image(image)]
                assert not {(r.colour, r.shape) for r in readings} & held_names
                shown += 1
                pairs += len(readings) == 2
    assert shown == 400 and 0.25 < pairs / shown < 0.45  # PAIR_PROB = 0.35 of the scenes show two subjects


def test_stage1_single_attribute_captions_never_pair_a_colour_with_a_shape(tmp_path):
    """Stage 1's single-attribute captions name each subject by its colour or its shape word, never both, so the
    language model cannot learn which colour goes with which shape (and read a held-out pair as improbable); both
    attributes are named, about equally often."""
    import tarfile

    from training.toy_world.scenes import COLOURS, SHAPES
    from training.toy_world.shards import write_caption_shards, write_reference_shards

    paths = [*write_caption_shards(tmp_path / "c", 200, 0, describe_prob=1.0, single_attribute=True),
             *write_reference_shards(tmp_path / "r", 200, 0, single_attribute=True)]
    named = {"colour": 0, "shape": 0}
    for path in paths:
        with tarfile.open(path) as tar:
            texts = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
        for text in texts:
            words = text.split()
            colours = [i for i, w in enumerate(words) if w in COLOURS]
            shapes = [i for i, w in enumerate(words) if w in SHAPES.values()]
            subjects = 2 if "next to" in text else 1
            assert len(colours) + len(shapes) == subjects, text  # one attribute word per subject
            assert not any(i + 1 in shapes for i in colours), text  # never "red round"
            named["colour"] += len(colours)
            named["shape"] += len(shapes)
    assert 0.4 < named["colour"] / (named["colour"] + named["shape"]) < 0.6


def test_off_palette_pictures_show_a_shape_in_no_palette_colour(tmp_path):
    """Stage 1's off-palette pictures: the colour is far from every subject and background colour (so no palette
    subject, held-out ones included, is shown), the caption names the shape alone, and the scorer reads the shape."""
    import tarfile

    from training.toy_world.scenes import OFF_PALETTE_DISTANCE, SHAPES, off_palette_colour
    from training.toy_world.shards import write_reference_shards

    rng = random.Random(0)
    palette = [np.asarray(c, float) for c in (*COLOURS.values(), *PLACES.values())]
    for _ in range(200):
        colour = np.asarray(off_palette_colour(rng), float)
        assert min(np.linalg.norm(colour - p) for p in palette) >= OFF_PALETTE_DISTANCE
    subject = Subject("triangle", "red")
    painted = np.asarray(reference_image(subject, fill=(90, 200, 120)))
    palette_picture = np.asarray(reference_image(subject))
    own = (palette_picture == COLOURS["red"]).all(-1)  # the triangle's pixels in its palette colour
    assert own.sum() > 500 and (painted[own] == (90, 200, 120)).all() and (painted[~own] == palette_picture[~own]).all()

    paths = write_reference_shards(tmp_path / "r", 300, 0, single_attribute=True, off_palette_prob=0.5)
    shape_only = 0
    for path in paths:
        with tarfile.open(path) as tar:
            texts = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
        shape_only += sum(any(f" {w} " in t for w in SHAPES.values()) for t in texts)
    assert 0.6 < shape_only / 300 < 0.9  # half off-palette (shape words) + a half of the rest named by shape


def test_control_subject_shares_no_attribute_and_scores_are_split():
    from training.toy_world.evaluate import condition_scores, control_subject

    for subject in all_subjects():
        other = control_subject(subject)
        assert other.colour != subject.colour and other.shape != subject.shape
    subjects = all_subjects()
    images = [render(Scene(s, "on the grass", 0.5, 0.5)) for s in subjects]
    scores = condition_scores(images, subjects, ["on the grass"] * len(subjects))
    assert scores["seen_subject_fidelity"] == scores["held_out_subject_fidelity"] == 1.0
    assert (scores["seen_images"], scores["held_out_images"]) == (15, 5)
    assert scores["unrelated_subject_fidelity"] == 0.0
    assert scores["held_out_colour_accuracy"] == scores["seen_shape_accuracy"] == 1.0
    assert scores["seen_subject_exact"] == scores["held_out_subject_exact"] == 1.0


def test_study_reports_mean_and_standard_error():
    from training.toy_world.study import mean_and_se

    mean, se = mean_and_se([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and se == pytest.approx(0.1 / 3**0.5)
    assert mean_and_se([0.4]) == (0.4, 0.0)


def test_study_table_aggregates_every_condition_over_the_seeds():
    from training.toy_world.evaluate import ATTRIBUTE_COLUMNS, CONDITIONS, TABLE_COLUMNS
    from training.toy_world.study import aggregate, study_markdown

    def seed_result(value):
        return {"conditions": {c: {m: value for m in TABLE_COLUMNS + ATTRIBUTE_COLUMNS} for c in CONDITIONS}}

    table = aggregate({0: seed_result(0.2), 1: seed_result(0.4), 2: seed_result(0.6)})
    cell = table["after_stage3_image"]["held_out_subject_fidelity"]
    assert cell["values"] == [0.2, 0.4, 0.6] and cell["mean"] == pytest.approx(0.4)
    assert cell["se"] == pytest.approx(0.2 / 3**0.5)
    text = study_markdown({"seeds": [0, 1, 2], "table": table, "command": "cmd",
                           "images_per_condition": {"all": 300, "seen": 225, "held_out": 75}})
    assert "| after_stage3_image | 0.400 ± 0.115 |" in text and "3 seeds (0, 1, 2)" in text
    assert "Two entities" not in text


def test_study_table_reports_two_entity_prompts():
    from training.toy_world.evaluate import CONDITIONS, TWO_ENTITY_COLUMNS
    from training.toy_world.study import aggregate, study_markdown

    per_seed = {k: {"two_entity": {c: {m: 0.1 * (k + 1) for m in TWO_ENTITY_COLUMNS} for c in CONDITIONS}}
                for k in range(3)}
    table = aggregate(per_seed, "two_entity", TWO_ENTITY_COLUMNS)
    assert table["after_stage3_image"]["entity_exact"]["mean"] == pytest.approx(0.2)
    text = study_markdown({"seeds": [0, 1, 2], "table": {}, "two_entity": table, "command": "cmd",
                           "images_per_condition": {"all": 300, "seen": 225, "held_out": 75, "two_entity": 200}})
    assert "Two entities" in text and "(200 prompts per seed" in text
    assert "| after_stage3_image | 0.200 ± 0.058 |" in text


def test_study_summarizes_finished_seed_runs_and_names_a_missing_one(tmp_path):
    """`study --summarize` makes the table from seed runs finished apart (each seed's eval/results.json), and refuses
    a table with a seed missing, naming its file."""
    import json

    from training.toy_world.evaluate import ATTRIBUTE_COLUMNS, CONDITIONS, TABLE_COLUMNS, TWO_ENTITY_COLUMNS
    from training.toy_world.study import study

    for k in range(3):
        row = {m: 0.1 * (k + 1) for m in TABLE_COLUMNS + ATTRIBUTE_COLUMNS} | {"seen_images": 150, "held_out_images": 50}
        results = {"conditions": {c: row for c in CONDITIONS},
                   "two_entity": {c: {m: 0.05 * (k + 1) for m in TWO_ENTITY_COLUMNS} for c in CONDITIONS},
                   "sampling": {"two_entity_images_per_condition": 200}}
        (tmp_path / f"seed_{k}" / "eval").mkdir(parents=True)
        (tmp_path / f"seed_{k}" / "eval" / "results.json").write_text(json.dumps(results))
    summary = study(tmp_path, (0, 1, 2), summarize_only=True)
    assert summary["table"]["after_stage3_image"]["seen_subject_fidelity"]["values"] == [0.1, 0.2, 0.30000000000000004]
    assert summary["two_entity"]["after_stage3_image"]["entity_exact"]["mean"] == pytest.approx(0.1)
    assert "3 seeds (0, 1, 2)" in (tmp_path / "study.md").read_text()
    with pytest.raises(FileNotFoundError, match=r"seed 3 has no finished run: .*seed_3/eval/results.json"):
        study(tmp_path, (0, 3), summarize_only=True)


def test_a_condition_fingerprint_covers_what_its_images_depend_on(tmp_path):
    """Copies of one base model share the base conditions; another export, other settings or another file of the
    base make a new fingerprint, so a stale condition is never read back."""
    import shutil

    from training.toy_world.evaluate import EvalSettings, condition_fingerprint

    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    (base / "unet" / "weights.bin").write_bytes(b"\x00" * 100)
    (base / "model_index.json").write_text("{}")
    export = tmp_path / "export.safetensors"
    export.write_bytes(b"\x01" * 10)
    settings = EvalSettings()
    first = condition_fingerprint("base_text", base, None, settings, 32)
    shutil.copytree(base, tmp_path / "copy")
    assert condition_fingerprint("base_text", tmp_path / "copy", None, settings, 32) == first
    assert condition_fingerprint("base_text_described", base, None, settings, 32) != first
    assert condition_fingerprint("base_text", base, None, EvalSettings(steps=24), 32) != first
    assert condition_fingerprint("base_text", base, None, settings, 64) != first
    kosmos = condition_fingerprint("after_stage3_image", base, export, settings, 32)
    export.write_bytes(b"\x02" * 10)
    assert condition_fingerprint("after_stage3_image", base, export, settings, 32) != kosmos
    (base / "unet" / "weights.bin").write_bytes(b"\x00" * 99 + b"\x01")
    assert condition_fingerprint("base_text", base, None, settings, 32) != first
