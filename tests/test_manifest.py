"""icm/manifest.py: the stage-one hand-over, written and read back."""

import json

import torch
from helpers import toy_image

from icm.io import write_image
from icm.manifest import MANIFEST_NAME, linf_8bit, manifest_record, read_manifest_pairs


def test_records_written_by_the_writer_are_read_back_as_pairs(tmp_path):
    out = tmp_path / "augmented_data"
    (out / "images").mkdir(parents=True)
    lines = []
    for i in range(3):
        x = toy_image(i, 16, 12)
        x_aug = ((x * 255).round() + (i + 1)).clamp(0, 255) / 255
        write_image(tmp_path / f"src{i}.png", x)
        write_image(out / "images" / f"{i}.png", x_aug)
        linf = float(linf_8bit(x_aug[None], x[None])[0])
        lines.append(manifest_record(f"img{i}", tmp_path / f"src{i}.png", f"images/{i}.png", 16, 12, linf,
                                     {"m": 1.0}, {"m": 0.5}))
    assert [r["linf"] for r in lines] == [1.0, 2.0, 3.0]
    assert set(lines[0]) == {"id", "source", "output", "width", "height", "linf", "loss_before", "loss_after"}
    (out / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in lines))
    pairs = read_manifest_pairs(out)
    assert [p.id for p in pairs] == ["img0", "img1", "img2"]
    assert pairs[2].original == (tmp_path / "src2.png").resolve() and pairs[2].augmented == out / "images" / "2.png"


def test_linf_is_counted_in_whole_8bit_levels():
    x = torch.full((2, 3, 4, 4), 100 / 255)
    y = x.clone()
    y[0, 1, 2, 3] += 7 / 255
    y[1] -= 0.4 / 255  # rounds back to the same level
    assert linf_8bit(y, x).tolist() == [7.0, 0.0]
