"""Hostile video uploads and job-store limits: only real video containers are opened, every
frame's size is checked, the caps count active jobs, and leftovers of a killed run go."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from backend.errors import BadVideo, NotAVideo, TooManyJobs
from backend.video import io
from backend.video.jobs import JobStore
from tests.video_clips import write_clip

MAX_PIXELS = 100_000


def _jpeg_packets(arr: np.ndarray) -> list[bytes]:
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = arr.shape[1], arr.shape[0]
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 10)
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuvj420p")
    return [bytes(p) for p in codec.encode(frame)] + [bytes(p) for p in codec.encode(None)]


def write_growing_avi(path: Path, sizes: list[tuple[int, int]]) -> None:
    """An MJPEG AVI whose frames have the given ``(width, height)`` each (a JPEG per frame)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (w, h) in enumerate(sizes):
            for data in _jpeg_packets(np.full((h, w, 3), 40 * (i % 5), np.uint8)):
                packet = av.Packet(data)
                packet.stream = stream
                packet.pts = packet.dts = i
                packet.time_base = Fraction(1, 10)
                container.mux(packet)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif", ".mov", ".mkv"])
def test_allowed_containers_open(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    write_clip(path, frames=4, width=32, height=24)
    info = io.probe(path, 60, MAX_PIXELS)
    assert (info.width, info.height) == (32, 24)
    assert set(info.container.split(",")) & set(io.ALLOWED_DEMUXERS)


def test_mjpeg_avi_opens(tmp_path):
    write_growing_avi(tmp_path / "a.avi", [(32, 24)] * 3)
    assert io.probe(tmp_path / "a.avi", 60, MAX_PIXELS).container == "avi"


def _refused(path: Path) -> NotAVideo:
    with pytest.raises(NotAVideo) as info:
        io.probe(path, 60, MAX_PIXELS)
    assert info.value.status == 415 and "playlists" in str(info.value)
    return info.value


def test_ffconcat_naming_another_clip_is_refused(tmp_path):
    other = tmp_path / "other_job"
    other.mkdir()
    write_clip(other / "input.mp4", frames=4, width=32, height=24)
    upload = tmp_path / "upload"
    upload.write_text("ffconcat version 1.0\nfile other_job/input.mp4\n")
    with av.open(str(upload)) as unguarded:  # FFmpeg alone would follow it
        assert unguarded.format.name == "concat"
    _refused(upload)
    with pytest.raises(NotAVideo):
        list(io.sample_frames(upload, 10, 5))


def test_hls_playlist_naming_local_files_is_refused(tmp_path):
    write_clip(tmp_path / "seg.mp4", frames=4, width=32, height=24)
    playlist = tmp_path / "upload.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{tmp_path / 'seg.mp4'}\n#EXT-X-ENDLIST\n"
    )
    _refused(playlist)


def test_image_and_image_sequence_are_refused(tmp_path):
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / f"img{i:03d}.png")
    (tmp_path / "img%03d.png").write_bytes((tmp_path / "img000.png").read_bytes())
    _refused(tmp_path / "img000.png")
    _refused(tmp_path / "img%03d.png")  # image2 would read the whole numbered sequence


def test_riff_audio_is_not_called_a_truncated_video(tmp_path):
    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    _refused(wav)


def test_frame_growing_later_fails_naming_the_frame(tmp_path):
    path = tmp_path / "grow.avi"
    write_growing_avi(path, [(32, 24)] * 3 + [(400, 300)] + [(32, 24)])
    assert io.probe(path, 60, MAX_PIXELS).width == 32  # the first frame is fine
    with pytest.raises(BadVideo, match="frame 3 .* 400x300 = 120000 pixels.*limit is 100000"):
        list(io.sample_frames(path, 10, 100, max_pixels=MAX_PIXELS))
    with pytest.raises(BadVideo, match="frame 3 .* 400x300 but its first frame is 32x24") as info:
        list(io.sample_frames(path, 10, 100))  # as the runner calls it: no limit passed
    assert info.value.status == 400 and info.value.code == "frame_size_changed"


def test_skipped_frames_are_checked_too(tmp_path):
    path = tmp_path / "grow.avi"
    write_growing_avi(path, [(32, 24)] * 3 + [(48, 24)] + [(32, 24)] * 6)
    with pytest.raises(BadVideo, match="frame 3 "):
        list(io.sample_frames(path, 1, 100))  # 1 frame/s out of 10 skips frame 3


def test_steady_clip_passes_the_frame_check(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, frames=6, width=32, height=24)
    frames = list(io.sample_frames(path, 12, 100, max_pixels=MAX_PIXELS))
    assert len(frames) == 6 and all(img.size == (32, 24) for _, img in frames)


# -- the job store ----------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    stores: list[JobStore] = []

    def make(per_client: int = 2, max_jobs: int = 3) -> JobStore:
        stores.append(JobStore(tmp_path / "jobs", 3600, per_client, max_jobs))
        return stores[-1]

    yield make
    for s in stores:
        s.close()


def test_finished_jobs_do_not_count_against_the_caps(store):
    jobs = store(per_client=1, max_jobs=3)
    for _ in range(10):  # one client, one job at a time, far more than the store holds
        job = jobs.create("alice", {})
        jobs.finish(job, "done")
    assert len(jobs._jobs) == 3
    jobs.create("bob", {})  # everyone else still gets in


def test_store_full_evicts_the_oldest_finished_first(store):
    jobs = store(per_client=3, max_jobs=3)
    first, second, third = (jobs.create(c, {}) for c in ("a", "b", "c"))
    jobs.finish(second, "done")
    time.sleep(0.01)
    jobs.finish(first, "failed", "boom")
    fourth = jobs.create("d", {})
    assert set(jobs._jobs) == {first.id, third.id, fourth.id}
    assert not jobs.folder(second).exists()
    fifth = jobs.create("e", {})
    assert set(jobs._jobs) == {third.id, fourth.id, fifth.id}


def test_active_jobs_hold_the_global_cap(store):
    jobs = store(per_client=5, max_jobs=2)
    jobs.create("a", {})
    jobs.create("b", {})
    with pytest.raises(TooManyJobs, match="2 video jobs queued or running"):
        jobs.create("c", {})


def test_per_client_cap_counts_active_only(store):
    jobs = store(per_client=1, max_jobs=10)
    job = jobs.create("a", {})
    with pytest.raises(TooManyJobs, match="you already have 1"):
        jobs.create("a", {})
    jobs.finish(job, "cancelled")
    jobs.create("a", {})


def test_leftover_tmp_files_are_removed_at_start(store):
    jobs = store()
    job = jobs.create("a", {})
    folder = jobs.folder(job)
    (folder / "input.mp4").write_bytes(b"kept")
    for name in (".result.mp4.tmp", ".job.json.ab12cd34.tmp", "x.tmp"):
        (folder / name).write_bytes(b"half")
    jobs.close()
    again = store()
    assert sorted(p.name for p in folder.iterdir()) == ["input.mp4", "job.json"]
    assert again.get(job.id).state == "failed"


# -- through the service ----------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from backend.main import create_app
    from tests.service_helpers import isolated_settings, write_tiny_checkpoint

    settings = isolated_settings(
        tmp_path_factory.mktemp("video"), video_max_pixels=100_000, video_max_duration_s=5.0
    )
    write_tiny_checkpoint(settings.checkpoint_dir, "tiny")
    with TestClient(create_app(settings)) as c:
        c.jobs_root = settings.cache_dir / "jobs"
        yield c


def _job_folders(client) -> list[str]:
    root = client.jobs_root
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_playlists_are_refused_before_a_job_exists(client, tmp_path):
    from tests.test_video_api import submit

    first = submit(client, _clip_bytes(tmp_path))
    assert first.status_code == 202, first.text
    other = first.json()["job"]
    before = _job_folders(client)
    playlists = {
        "list.mp4": f"ffconcat version 1.0\nfile ../{other}/input.mp4\n",
        "live.m3u8": f"#EXTM3U\n#EXTINF:1,\n../{other}/input.mp4\n#EXT-X-ENDLIST\n",
    }
    for name, text in playlists.items():
        r = submit(client, text.encode(), name=name)
        assert (r.status_code, r.json()["code"]) == (415, "not_a_video"), (name, r.text)
        assert "playlists" in r.json()["detail"]
    assert _job_folders(client) == before


def test_a_job_whose_frames_grow_fails_naming_the_frame(client, tmp_path):
    from tests.test_video_api import submit, wait

    path = tmp_path / "grow.avi"
    write_growing_avi(path, [(32, 24)] * 3 + [(600, 400)] + [(32, 24)] * 2)
    r = submit(client, path.read_bytes(), name="grow.avi", fps=10)
    assert r.status_code == 202, r.text
    body = wait(client, r.json()["job"])
    assert body["state"] == "failed" and "frame 3" in body["error"], body


def _clip_bytes(tmp_path: Path) -> bytes:
    write_clip(tmp_path / "ok.mp4", frames=4, width=32, height=24)
    return (tmp_path / "ok.mp4").read_bytes()
