from __future__ import annotations

import os

import pytest

from trainer.file_parts import find_parts, join_parts, sha256_file, split_file


def test_split_then_join_round_trips_exactly(tmp_path):
    src = tmp_path / "model.safetensors"
    data = os.urandom(10_000)
    src.write_bytes(data)
    parts = split_file(src, tmp_path / "out", part_bytes=3_000)
    assert [p.name for p in parts] == [f"model.safetensors.part{i:02d}" for i in range(4)]
    assert [p.stat().st_size for p in parts] == [3_000, 3_000, 3_000, 1_000]
    found = find_parts(tmp_path / "out", "model.safetensors")
    joined = join_parts(found, tmp_path / "ckpt" / "model.safetensors", sha256_file(src))
    assert joined.read_bytes() == data


def test_a_missing_or_damaged_part_is_refused_and_nothing_is_written(tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(5_000))
    parts = split_file(src, tmp_path / "out", part_bytes=2_000)
    digest = sha256_file(src)
    with pytest.raises(ValueError, match="hash to .* expected"):
        join_parts(parts[:2], tmp_path / "dst" / "m.bin", digest)
    parts[1].write_bytes(parts[1].read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        join_parts(parts, tmp_path / "dst" / "m.bin", digest)
    assert list((tmp_path / "dst").iterdir()) == []  # no partial file, no temp file left
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match="not numbered 00..01"):
        find_parts(tmp_path / "out", "m.bin")
    with pytest.raises(FileNotFoundError, match="no other.bin.partNN"):
        find_parts(tmp_path / "out", "other.bin")


def test_joined_and_exported_files_get_the_normal_file_mode(tmp_path):
    import stat

    import torch

    from trainer.model.checkpoint import atomic_torch_save, default_file_mode

    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 100)
    joined = join_parts(split_file(src, tmp_path / "p", 30), tmp_path / "j" / "m.bin", sha256_file(src))
    atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "c.pth")
    for path in (joined, tmp_path / "c.pth"):
        assert stat.S_IMODE(path.stat().st_mode) == default_file_mode()  # not mkstemp's 0600
