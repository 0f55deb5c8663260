"""``python -m trainer.eval.export``: values, resume after a kill, torchrun, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_eval_runner import run_torchrun
from trainer.eval import export
from trainer.model.attention_maps import threshold_masks
from trainer.model.feature_pca import patch_pca
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD, build_vit

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--random_init", "--arch", "vit_tiny", "--patch_size", "16", "--image_size", "32",
        "--shard_size", "3", "--batch_size", "2", "--device", "cpu"]  # fmt: skip
ALL = ["--outputs", "cls,patch,pca,attention,masks"]


def photos(folder: Path, n: int = 7) -> Path:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / ("sub" if i % 2 else "") / f"p{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def shards(out: Path) -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for path in sorted(out.glob("shard-*.npz")):
        with np.load(path) as z:
            result[path.name] = {k: z[k] for k in z.files}
    return result


def ref_input(path: Path, size: int) -> torch.Tensor:
    """RGB, bicubic resize to size x size, [0, 1], ImageNet normalisation."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.tensor(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return ((x - mean[:, None, None]) / std[:, None, None])[None]


def test_outputs_equal_the_model_and_the_index_maps_every_file(tmp_path):
    torch.set_num_threads(1)
    images = photos(tmp_path / "img")
    index = export.main([*ARGS, *ALL, "--images", str(images), "--output_dir", str(tmp_path / "o")])
    assert len(index["files"]) == 7 and index["skipped"] == ["broken.jpg"]
    assert [f["file"] for f in index["files"]][:2] == ["p0.jpg", "p2.jpg"]  # sorted paths
    assert index["precision"] == "fp32" and index["grid"] == [2, 2] and index["arch"] == "vit_tiny"
    saved = json.loads((tmp_path / "o" / "index.json").read_text())
    assert saved["files"] == index["files"] and saved["flags"]["shard_size"] == 3
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 16).eval()
    data = shards(tmp_path / "o")
    for entry in index["files"]:
        shard = data[entry["shard"]]
        row = {k: v[entry["row"]] for k, v in shard.items() if k not in ("skipped", "settings")}
        with torch.no_grad():
            x = ref_input(images / entry["file"], 32)
            tokens = model.get_intermediate_layers(x, 1)[0][0]
            attn = model.get_last_selfattention(x)[0, :, 0, 1:].reshape(3, 2, 2)
        assert str(row["files"]) == entry["file"]
        assert np.allclose(row["cls"], tokens[0].numpy(), atol=1e-5)
        assert np.allclose(row["patch"], tokens[1:].numpy(), atol=1e-5)
        assert np.allclose(row["attention"], attn.numpy(), atol=1e-5)
        assert np.array_equal(row["masks"], threshold_masks(torch.tensor(row["attention"]), 0.6))
        pca = patch_pca(torch.tensor(row["patch"]), (2, 2)).rgb
        assert np.allclose(row["pca"], pca.numpy(), atol=1e-5)


KILL_AFTER_FIRST_SHARD = textwrap.dedent(
    """
    import os, signal, sys
    from trainer.eval import export
    original = export.atomic_write
    def write_then_die(path, write, mode="wb"):
        original(path, write, mode)
        if path.name.startswith("shard-"):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no index
    export.atomic_write = write_then_die
    export.main(sys.argv[1:])
    """
)


def test_a_killed_export_resumes_to_the_uninterrupted_result(tmp_path):
    images = photos(tmp_path / "img")
    script = tmp_path / "killed.py"
    script.write_text(KILL_AFTER_FIRST_SHARD)
    out = tmp_path / "resumed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), *ARGS, *ALL, "--images", str(images), "--output_dir"]
    proc = subprocess.run([*cmd, str(out)], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert [p.name for p in out.glob("shard-*")] == ["shard-00000.npz"]
    assert not (out / "index.json").exists()
    (out / ".shard-00001.npz.half.tmp").write_bytes(b"PK half a shard")  # killed mid-write
    resumed = export.main([*ARGS, *ALL, "--images", str(images), "--output_dir", str(out)])
    assert resumed["run"]["shards_reused"] == 1 and resumed["run"]["images"] == 5
    assert not list(out.glob(".*.tmp"))
    whole = export.main([*ARGS, *ALL, "--images", str(images), "--output_dir", str(tmp_path / "w")])
    assert resumed["files"] == whole["files"]
    a, b = shards(out), shards(tmp_path / "w")
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert np.array_equal(a[name][key], b[name][key]), (name, key)
    again = export.main([*ARGS, *ALL, "--images", str(images), "--output_dir", str(out)])
    assert again["run"]["images"] == 0 and again["run"]["shards_reused"] == 3


def test_torchrun_ranks_write_their_own_shards_with_the_single_process_result(tmp_path):
    images = photos(tmp_path / "img")
    one = export.main([*ARGS, "--images", str(images), "--output_dir", str(tmp_path / "one")])
    cmd = ["-m", "trainer.eval.export", *ARGS, "--images", str(images)]
    proc = run_torchrun([*cmd, "--output_dir", str(tmp_path / "two")], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images/s" in proc.stdout and "2 process(es)" in proc.stdout
    two = json.loads((tmp_path / "two" / "index.json").read_text())
    assert two["files"] == one["files"] and two["shards"] == one["shards"]
    a, b = shards(tmp_path / "one"), shards(tmp_path / "two")
    for name in a:
        for key in ("cls", "patch", "index", "files", "skipped"):
            assert np.array_equal(a[name][key], b[name][key]), (name, key)


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    images = photos(tmp_path / "img", 2)
    base = [*ARGS, "--images", str(images), "--output_dir", str(tmp_path / "o")]
    for extra, message in (
        (["--outputs", "cls,depth"], "unknown ['depth']; choose from cls,patch,pca"),
        (["--image_size", "8"], "smaller than the patch size 16"),
        (["--shard_size", "0"], "--shard_size must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            export.main([*base, *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        export.main(
            [*ARGS, "--images", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "e")]
        )
    assert "holds no images" in capsys.readouterr().err
    export.main(base)
    with pytest.raises(SystemExit):  # resuming with other settings would mix two exports
        export.main([*base, "--image_size", "48"])
    assert "written with other settings" in capsys.readouterr().err
