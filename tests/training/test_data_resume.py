"""Determinism, exact resume (also with worker processes), corrupt samples, and the DDP split of the loader."""

from __future__ import annotations

import itertools
import pickle
import tarfile

import pytest
import torch

from training.data import ShardError, build_dataloader
from training.data.synthetic import synthetic_sample, write_synthetic_shards
from training.data.writer import ShardWriter

IMAGE = 28
TARGET = 16


@pytest.fixture(scope="module")
def stage3_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage3")
    for kind in ("captions", "editing", "compositional"):
        write_synthetic_shards(root / kind, kind, num_samples=10, samples_per_shard=3)
    return root


def _stage3_cfg(root, num_workers):
    kinds = ("captions", "editing", "compositional")
    return {"num_workers": num_workers, "sources": [{"kind": k, "shards": str(root / k)} for k in kinds]}


def _build(cfg, tokenizer, stage="stage3", rank=0, world_size=1, batch_size=2, seed=7):
    return build_dataloader(
        stage, cfg, tokenizer, image_size=IMAGE, target_size=TARGET, batch_size=batch_size, rank=rank,
        world_size=world_size, seed=seed,
    )  # fmt: skip


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif key in ("entity_masks",):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True))
        elif key == "entity_token_index":
            assert [[t.tolist() for t in row] for row in a[key]] == [[t.tolist() for t in row] for row in b[key]]
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_uninterrupted_batches(stage3_shards, kosmos_tokenizer, num_workers):
    cfg = _stage3_cfg(stage3_shards, num_workers)
    total, cut = 11, 5  # 11 batches of 2 cross shard and epoch boundaries of the 10-sample sources
    reference = list(itertools.islice(iter(_build(cfg, kosmos_tokenizer)), total))

    first = _build(cfg, kosmos_tokenizer)
    head = list(itertools.islice(iter(first), cut))
    state = first.state_dict()
    assert state["step"] == cut
    resumed = _build(cfg, kosmos_tokenizer)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(iter(resumed), total - cut))

    for a, b in zip(reference, head + tail, strict=True):
        _same(a, b)
    assert resumed.step == total


def test_same_data_with_and_without_a_fresh_iterator(stage3_shards, kosmos_tokenizer):
    # Breaking out of the loop and iterating again continues where the consumer stopped (prefetched batches are
    # not lost), exactly as a resume from state_dict does.
    cfg = _stage3_cfg(stage3_shards, 2)
    reference = [b["keys"] for b in itertools.islice(iter(_build(cfg, kosmos_tokenizer)), 6)]
    loader = _build(cfg, kosmos_tokenizer)
    got = [b["keys"] for b in itertools.islice(iter(loader), 3)]
    got += [b["keys"] for b in itertools.islice(iter(loader), 3)]
    assert got == reference


def test_different_seeds_give_different_orders(stage3_shards, kosmos_tokenizer):
    cfg = _stage3_cfg(stage3_shards, 0)
    a = [b["keys"] for b in itertools.islice(iter(_build(cfg, kosmos_tokenizer, seed=1)), 6)]
    b = [b["keys"] for b in itertools.islice(iter(_build(cfg, kosmos_tokenizer, seed=2)), 6)]
    assert a != b


def test_resume_with_another_layout_is_refused_exactly_but_continues(stage3_shards, kosmos_tokenizer, caplog):
    loader = _build(_stage3_cfg(stage3_shards, 0), kosmos_tokenizer)
    list(itertools.islice(iter(loader), 3))
    other = _build(_stage3_cfg(stage3_shards, 2), kosmos_tokenizer)
    other.load_state_dict(loader.state_dict())
    assert "not exact" in caplog.text
    assert len(list(itertools.islice(iter(other), 2))) == 2 and other.step == 5

    # The position of another stage's run is ignored altogether.
    stage2 = _build(
        {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(stage3_shards / "captions")}]},
        kosmos_tokenizer,
        stage="stage2",
    )
    stage2.load_state_dict(loader.state_dict())
    assert stage2.step == 0 and "ignoring the data position" in caplog.text


def _write_with_corrupt_samples(folder):
    good = [synthetic_sample("captions", i) for i in range(6)]
    with ShardWriter(folder, "captions", 100) as writer:
        writer.write(good[0])
        writer.write({"__key__": "badjpeg", "jpg": b"this is not a jpeg", "txt": "a broken image"})
        writer.write(good[1])
        writer.write({"__key__": "notext", "jpg": good[2]["jpg"]})  # missing member
        writer.write(good[2])
        writer.write({"__key__": "truncated", "jpg": good[3]["jpg"][:40], "txt": "a truncated image"})
        for sample in good[3:]:
            writer.write(sample)
    with ShardWriter(folder, "editing", 100) as writer:
        writer.write({"__key__": "badjson", "src.jpg": good[0]["jpg"], "tgt.jpg": good[1]["jpg"], "json": b"{nope"})
        writer.write(synthetic_sample("editing", 0))


def test_corrupt_samples_are_skipped_and_counted(tmp_path, kosmos_tokenizer):
    _write_with_corrupt_samples(tmp_path / "bad")
    cfg = {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(tmp_path / "bad" / "captions-000000.tar")}]}
    loader = _build(cfg, kosmos_tokenizer, batch_size=3)
    batches = list(itertools.islice(iter(loader), 2))
    keys = [k.split("#")[1] for b in batches for k in b["keys"]]
    assert keys == [f"s{i:06d}" for i in range(6)]
    assert loader.stats == {"skipped_corrupt": 3}

    cfg = {"num_workers": 0, "sources": [{"kind": "editing", "shards": str(tmp_path / "bad" / "editing-000000.tar")}]}
    loader = _build(cfg, kosmos_tokenizer, batch_size=1)
    next(iter(loader))
    assert loader.stats == {"skipped_corrupt": 1}


def test_broken_and_missing_shards_are_skipped(tmp_path, kosmos_tokenizer):
    paths = write_synthetic_shards(tmp_path, "captions", num_samples=6, samples_per_shard=3)
    paths[0].write_bytes(paths[0].read_bytes()[:700])  # truncated tar: its readable samples are kept
    cfg = {"num_workers": 0, "sources": [{"kind": "captions", "shards": [str(p) for p in paths] + ["gone.tar"]}]}
    loader = build_dataloader(
        "stage3", cfg, kosmos_tokenizer, image_size=IMAGE, target_size=TARGET, batch_size=2, rank=0, world_size=1,
        seed=0, base_dir=tmp_path,
    )  # fmt: skip
    list(itertools.islice(iter(loader), 4))
    assert loader.stats.get("skipped_missing_shard", 0) >= 1
    assert loader.stats.get("skipped_bad_shard", 0) + loader.stats.get("skipped_corrupt", 0) >= 1


def test_a_source_with_no_usable_sample_fails_clearly(tmp_path, kosmos_tokenizer):
    with ShardWriter(tmp_path, "captions", 10) as writer:
        writer.write({"__key__": "a", "jpg": b"garbage", "txt": "x"})
    cfg = {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(tmp_path)}]}
    with pytest.raises(ShardError, match="no usable sample"):
        next(iter(_build(cfg, kosmos_tokenizer)))


def _epoch_keys(cfg, tokenizer, rank, world_size, steps):
    loader = _build(cfg, tokenizer, stage="stage2", rank=rank, world_size=world_size, batch_size=1)
    return [b["keys"][0] for b in itertools.islice(iter(loader), steps)]


@pytest.mark.parametrize(("num_shards", "num_workers"), [(4, 0), (5, 2), (1, 0)])
def test_ranks_see_disjoint_deterministic_data(tmp_path, kosmos_tokenizer, num_shards, num_workers):
    per_shard = 4
    write_synthetic_shards(tmp_path, "captions", num_samples=num_shards * per_shard, samples_per_shard=per_shard)
    cfg = {"num_workers": num_workers, "sources": [{"kind": "captions", "shards": str(tmp_path)}]}
    # With an uneven split (5 shards, 4 readers) a reader reads 1 or 2 shards per epoch: take what every rank
    # reads before any reader can start its second epoch.
    steps = per_shard * max(1, num_shards // (2 * max(1, num_workers))) if num_shards > 1 else per_shard // 2
    rank0 = _epoch_keys(cfg, kosmos_tokenizer, 0, 2, steps)
    rank1 = _epoch_keys(cfg, kosmos_tokenizer, 1, 2, steps)
    assert len(set(rank0)) == len(rank0) == steps and len(set(rank1)) == steps
    assert not set(rank0) & set(rank1)
    assert rank0 == _epoch_keys(cfg, kosmos_tokenizer, 0, 2, steps)  # deterministic
    if num_shards == 4 and num_workers == 0:
        assert len(set(rank0) | set(rank1)) == 16  # together the two ranks cover the epoch


def test_uneven_shards_never_stall_a_rank(tmp_path, kosmos_tokenizer):
    # 3 shards for 2 ranks: rank 1 reads one shard per epoch and simply starts its next epoch sooner.
    write_synthetic_shards(tmp_path, "captions", num_samples=9, samples_per_shard=3)
    cfg = {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(tmp_path)}]}
    for rank in (0, 1):
        assert len(_epoch_keys(cfg, kosmos_tokenizer, rank, 2, 20)) == 20


def test_shards_are_plain_webdataset_tars(tmp_path):
    path = write_synthetic_shards(tmp_path, "compositional", num_samples=1)[0]
    with tarfile.open(path) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(
        ["s000000.jpg", "s000000.json"]
        + [f"s000000.ent{i}.{part}" for i in range(2) for part in ("crop.jpg", "cut.png", "mask.png")]
    )


def test_loader_plan_pickles_for_spawned_workers(stage3_shards, kosmos_tokenizer):
    # Under the "spawn" start method (macOS, Windows) the plan travels pickled; the tokenizer goes as its bytes.
    loader = _build(_stage3_cfg(stage3_shards, 0), kosmos_tokenizer)
    plan = pickle.loads(pickle.dumps(loader.plan))
    assert plan.tokenizer.encode("a dog") == kosmos_tokenizer.encode("a dog")
    assert plan.shards == loader.plan.shards and plan.config == loader.plan.config


def _cut_inside_member(path, member_name):
    """Truncate a tar in the middle of `member_name`'s data (its header stays whole)."""
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    path.write_bytes(path.read_bytes()[: member.offset_data + member.size // 2])


@pytest.mark.parametrize(("cut", "expected"), [
    ("jpg", ["s000000", "s000001"]),         # sample 2's first member is cut: sample 1 is whole and is kept
    ("txt", ["s000000", "s000001", "s000002"]),  # its second: sample 2 comes out incomplete, for the decoder to count
])
def test_a_truncated_member_loses_no_complete_sample(tmp_path, cut, expected):
    from training.data.shards import ShardReader

    (path,) = write_synthetic_shards(tmp_path, "captions", num_samples=3, samples_per_shard=3)
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers()]
    _cut_inside_member(path, next(n for n in names if n.startswith("s000002") and n.endswith(cut)))
    errors = []
    reader = ShardReader([str(path)], seed=0, source_index=0, reader=0, num_readers=1,
                         on_error=lambda kind, message: errors.append(kind))
    samples = list(itertools.islice(iter(reader), len(expected) + 1))  # + the next epoch's first sample
    assert [s.key for s in samples] == [*expected, "s000000"] and samples[-1].uid[0] == 1
    assert errors == ["skipped_bad_shard"]
    assert set(samples[1].members) == {"jpg", "txt"}
    if cut == "txt":
        assert set(samples[2].members) == {"jpg"}  # incomplete: `decode` refuses it and counts skipped_corrupt
