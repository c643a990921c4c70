"""Tests for icm.compression.datasets: stage-one pairs, plain folders, paired crops, splits."""

import json

import pytest
import torch
from helpers import colour_shift, toy_image, truncate, write_toy_stage_one
from torch.utils.data import DataLoader

from icm.compression.datasets import (
    MAX_CONSECUTIVE_UNREADABLE,
    PairedImageDataset,
    ResumableDistributedSampler,
    read_pairs,
    split_pairs,
)
from icm.io import ImageReadError, read_image_tensor, write_image


def test_manifest_pairs_resolve_absolute_and_folder_relative_sources(tmp_path):
    for relative in (False, True):
        root = write_toy_stage_one(tmp_path / str(relative), count=3, relative_sources=relative)
        pairs = read_pairs(root)
        assert [p.id for p in pairs] == ["img0", "img1", "img2"]
        x, x_aug = PairedImageDataset(pairs, 64, train=False).load(1)
        assert torch.equal(x, toy_image(1))
        assert torch.equal(x_aug, colour_shift(toy_image(1)))


def test_manifest_skips_missing_files_with_one_warning_and_keeps_last_duplicate(tmp_path):
    root = write_toy_stage_one(tmp_path, count=4)
    (root / "images" / "img2.png").unlink()
    with (root / "manifest.jsonl").open("a") as f:
        f.write(json.dumps({"id": "img0", "source": str(tmp_path / "originals/img3.png"),
                            "output": "images/img3.png"}) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 manifest entries .*img2.png"):
        pairs = read_pairs(root)
    assert [p.id for p in pairs] == ["img0", "img1", "img3"]
    assert pairs[0].original.name == "img3.png"  # the later line for img0 wins


def test_shard_manifests_and_several_folders_are_read_as_one_set(tmp_path):
    first = write_toy_stage_one(tmp_path / "a", count=4)
    lines = (first / "manifest.jsonl").read_text().splitlines()
    (first / "manifest.jsonl").unlink()  # as a run of two shards writes them
    (first / "manifest.shard-0-of-2.jsonl").write_text("\n".join(lines[0::2]) + "\n")
    (first / "manifest.shard-1-of-2.jsonl").write_text("\n".join(lines[1::2]) + "\n")
    assert sorted(p.id for p in read_pairs(first)) == ["img0", "img1", "img2", "img3"]
    second = tmp_path / "b"
    (second / "images").mkdir(parents=True)
    record = json.loads(lines[0])
    (second / "images" / "other.png").write_bytes((first / record["output"]).read_bytes())
    (second / "manifest.jsonl").write_text(json.dumps({**record, "id": "other", "output": "images/other.png"}) + "\n")
    both = read_pairs([first, second])
    assert len(both) == 5 and both[-1].id == "other" and both[-1].augmented == second / "images" / "other.png"
    with pytest.raises(ValueError, match=r"image id 'img0' is also in"):
        read_pairs([first, first])


def test_manifest_record_without_source_is_an_error_naming_the_line(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "manifest.jsonl").write_text('{"id": "a", "output": "images/a.png"}\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:1: record lacks source"):
        read_pairs(root)


def test_plain_folder_gives_identity_pairs_and_empty_folder_is_an_error(tmp_path):
    (tmp_path / "plain" / "sub").mkdir(parents=True)
    write_image(tmp_path / "plain" / "a.png", toy_image(0, 40, 48))
    write_image(tmp_path / "plain" / "sub" / "b.png", toy_image(1, 40, 48))
    pairs = read_pairs(tmp_path / "plain")
    assert [p.id for p in pairs] == ["a", "sub/b"]
    x, x_aug = PairedImageDataset(pairs, 32, train=True)[1]
    assert torch.equal(x, x_aug) and x.shape == (3, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        read_pairs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "missing")


def test_training_crop_and_flip_are_identical_on_both_halves(tmp_path):
    # The augmentation is a horizontal ramp: any crop offset or flip that differs between
    # the halves would change x_aug - x.
    ramp = torch.linspace(0, 0.2, 72).view(1, 1, 72)

    def add_ramp(x):
        return ((x * 0.7 + ramp) * 255).round() / 255

    pairs = read_pairs(write_toy_stage_one(tmp_path, count=2, augment=add_ramp))
    dataset = PairedImageDataset(pairs, 32, train=True, seed=5)
    full_x, full_aug = dataset.load(0)
    flips = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        x, x_aug = dataset[0]
        assert x.shape == x_aug.shape == (3, 32, 32)
        # Find the crop in the full original, check the augmented crop is the same window.
        found = False
        for flip in (False, True):
            candidate_x = x.flip(-1) if flip else x
            candidate_aug = x_aug.flip(-1) if flip else x_aug
            for top in range(80 - 31):
                for left in range(72 - 31):
                    if torch.equal(full_x[:, top:top + 32, left:left + 32], candidate_x):
                        assert torch.equal(full_aug[:, top:top + 32, left:left + 32], candidate_aug)
                        found = True
                        flips.add(flip)
                        break
                if found:
                    break
            if found:
                break
        assert found, f"epoch {epoch}: crop not found in the original"
    assert flips == {False, True}


def test_crop_determinism_and_padding(tmp_path):
    pairs = read_pairs(write_toy_stage_one(tmp_path, count=2, size=(40, 24)))
    a = PairedImageDataset(pairs, 64, train=True, seed=1)
    b = PairedImageDataset(pairs, 64, train=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
    x, x_aug = a[0]
    assert x.shape == (3, 64, 64)
    # 40x24 padded with zeros to 64x64: the padded area is black in both halves.
    assert x[:, 40:, :].abs().sum() == 0 and x_aug[:, 40:, :].abs().sum() == 0
    assert x.sum() > 0

    big = read_pairs(write_toy_stage_one(tmp_path / "big", count=1))
    c = PairedImageDataset(big, 32, train=True, seed=1)
    crops = []
    for epoch in range(4):
        c.set_epoch(epoch)
        crops.append(c[0][0])
    assert any(not torch.equal(crops[0], other) for other in crops[1:])


def test_validation_uses_the_centre_crop(tmp_path):
    pairs = read_pairs(write_toy_stage_one(tmp_path, count=1))
    x, x_aug = PairedImageDataset(pairs, 32, train=False)[0]
    full = read_image_tensor(pairs[0].original)
    assert torch.equal(x, full[:, 24:56, 20:52])
    assert torch.equal(x_aug, colour_shift(full)[:, 24:56, 20:52])


def test_size_mismatch_between_halves_is_skipped_like_an_unreadable_pair(tmp_path):
    root = write_toy_stage_one(tmp_path, count=2)
    write_image(root / "images" / "img0.png", toy_image(0, 40, 40))
    dataset = PairedImageDataset(read_pairs(root), 32)
    with pytest.raises(ImageReadError, match=r"img0.png: size \(40, 40\) differs from its original"):
        dataset.load(0)
    x, x_aug = dataset[0]  # the next pair stands in, and the bad one is counted
    assert x.shape == x_aug.shape == (3, 32, 32)
    assert dataset.unreadable_paths() == [root / "images" / "img0.png"]


def test_split_is_seeded_disjoint_and_keeps_one_validation_pair(tmp_path):
    pairs = read_pairs(write_toy_stage_one(tmp_path, count=5))
    train, val = split_pairs(pairs, 0.05, seed=0)
    assert len(val) == 1 and len(train) == 4
    assert {p.id for p in train} | {p.id for p in val} == {p.id for p in pairs}
    assert split_pairs(pairs, 0.05, seed=0) == (train, val)
    assert split_pairs(pairs, 0.0) == (pairs, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(pairs, 1.0)


def test_resumable_sampler_continues_the_epoch_order():
    data = list(range(10))
    sampler = ResumableDistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == data and full != data
    sampler.start_index = 4
    assert list(sampler) == full[4:] and len(sampler) == 6
    shards = [list(ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data


def test_unreadable_pair_is_flagged_and_the_next_pair_stands_in(tmp_path):
    root = write_toy_stage_one(tmp_path, count=5)
    pairs = read_pairs(root)
    bad_augmented = truncate(root / "images" / "img1.png")
    bad_original = truncate(tmp_path / "originals" / "img3.png")
    dataset = PairedImageDataset(pairs, 32, train=False)
    assert all(torch.equal(u, v) for u, v in zip(dataset[1], dataset[2]))
    assert all(torch.equal(u, v) for u, v in zip(dataset[3], dataset[4]))
    assert dataset.unreadable.tolist() == [0, 2, 0, 1, 0]
    assert dataset.unreadable_paths() == [bad_augmented, bad_original]
    write_image(root / "images" / "img0.png", toy_image(0, 40, 40))  # a wrong pair: skipped as well
    assert all(torch.equal(u, v) for u, v in zip(dataset[0], dataset[2]))  # img1 is flagged already
    assert dataset.unreadable.tolist() == [2, 2, 0, 1, 0]


def test_unreadable_flags_set_in_worker_processes_reach_the_main_process(tmp_path):
    root = write_toy_stage_one(tmp_path, count=6, size=(32, 32))
    bad = truncate(root / "images" / "img4.png")
    dataset = PairedImageDataset(read_pairs(root), 32, train=False)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    x, x_aug = torch.cat([b[0] for b in loader]), torch.cat([b[1] for b in loader])
    assert x.shape == (6, 3, 32, 32) and torch.equal(x[4], x[5]) and torch.equal(x_aug[4], x_aug[5])
    assert dataset.unreadable_paths() == [bad]


def test_a_run_of_unreadable_pairs_is_a_one_line_error_naming_the_first(tmp_path):
    root = write_toy_stage_one(tmp_path, count=MAX_CONSECUTIVE_UNREADABLE + 1, size=(32, 32))
    for i in range(MAX_CONSECUTIVE_UNREADABLE):
        truncate(root / "images" / f"img{i}.png")
    dataset = PairedImageDataset(read_pairs(root), 32, train=False)
    with pytest.raises(ImageReadError, match=r"img0.png: unreadable, and so are the next 7 pairs") as info:
        dataset[0]
    assert "\n" not in str(info.value)
    assert dataset[1][0].shape == (3, 32, 32)  # from 1, the ninth pair is within reach
    assert len(dataset.unreadable_paths()) == MAX_CONSECUTIVE_UNREADABLE
