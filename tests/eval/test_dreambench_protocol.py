"""DreamBench subjects and prompts parsed from the real prompts_and_classes.txt."""

import pytest

from training.evaluation.dreambench_protocol import kosmos_prompt, load_dreambench, scored_prompt


def test_thirty_subjects_with_25_prompts(dreambench_dir):
    subjects = load_dreambench(dreambench_dir)
    assert len(subjects) == 30
    assert sum(s.live for s in subjects) == 9
    assert all(len(s.prompts) == 25 and s.reference.is_file() for s in subjects)
    dog = next(s for s in subjects if s.name == "dog")
    assert dog.class_name == "dog" and dog.live
    assert dog.prompts[0].kosmos == "<i> in the jungle"
    assert dog.prompts[0].scored == "a dog in the jungle"
    assert dog.prompts[10].kosmos == "<i> wearing a red hat"
    teapot = next(s for s in subjects if s.name == "teapot")
    assert teapot.prompts[13].kosmos == "<i> floating on top of water"
    assert teapot.prompts[24].kosmos == "<i>, cube shaped"
    assert teapot.prompts[24].scored == "a cube shaped teapot"


def test_prompt_rewrites():
    assert kosmos_prompt("a {0} {1} on the beach") == "<i> on the beach"
    assert kosmos_prompt("a red {0} {1}") == "<i>, red"
    assert scored_prompt("a red {0} {1}", "stuffed animal") == "a red stuffed animal"


def test_subset_and_unknown_subject(dreambench_dir):
    assert [s.name for s in load_dreambench(dreambench_dir, ["cat", "vase"])] == ["cat", "vase"]
    with pytest.raises(ValueError, match="unknown DreamBench subjects"):
        load_dreambench(dreambench_dir, ["unicorn"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts_and_classes.txt"):
        load_dreambench(tmp_path)
