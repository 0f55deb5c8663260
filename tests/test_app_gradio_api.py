"""The app's API as ``gradio_client`` reads it: every endpoint called through the names
``view_api()`` shows, the real model ids and head choices, optional inputs, and the service's own
messages for values out of range or a file that is not an image."""

from __future__ import annotations

import re

import httpx
import pytest
from gradio_client import Client, handle_file

from tests.app_stack import MODEL_IDS, TINY, live_client, live_stack, scene
from tests.test_app_gradio_client import HEADS, _analyse, _download, _explore

pytestmark = pytest.mark.slow
live = pytest.fixture(live_stack, scope="module", name="live")
client = pytest.fixture(live_client, scope="module", name="client")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("inputs")
    image, mask = scene((64, 64))
    image.save(tmp / "scene.png")
    mask.save(tmp / "scene_mask.png")
    return {"image": str(tmp / "scene.png"), "mask": str(tmp / "scene_mask.png")}


def _api(client: Client) -> dict:
    return client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_view_api_names_every_parameter_and_output_with_the_real_choices(client):
    for name, endpoint in _api(client).items():
        params = [p["parameter_name"] for p in endpoint["parameters"]]
        labels = [r["label"] for r in endpoint["returns"]]
        assert not [p for p in params if re.fullmatch(r"param_\d+", p)], (name, params)
        assert not [lab for lab in labels if re.fullmatch(r"value_\d+", lab)], (name, labels)
        for p in endpoint["parameters"]:
            if p["parameter_name"] in ("model", "model_a", "model_b"):
                assert all(f"'{m}'" in p["python_type"]["type"] for m in MODEL_IDS), p
            if p["parameter_name"] == "gt_mask":  # optional everywhere
                assert p["parameter_has_default"] and p["parameter_default"] is None, name
    heads = next(
        p for p in _api(client)["/analyze"]["parameters"] if p["parameter_name"] == "heads"
    )
    assert heads["parameter_default"] == list(range(HEADS))  # the default model's heads


def _sample_inputs(files: dict[str, str], clip: str) -> dict:
    image = handle_file(files["image"])
    return {
        "image": image,
        "image_a": image,
        "image_b": image,
        "gt_mask": handle_file(files["mask"]),
        "model": MODEL_IDS[-1],
        "model_a": MODEL_IDS[0],
        "model_b": MODEL_IDS[-1],
        "image_size": 64,
        "resize": "square",
        "threshold": 0.6,
        "layer": -1,
        "query": "2,3",
        "heads": [0, 2],
        "facet": "key",
        "top_k": 5,
        "method": "lost",
        "video": handle_file(clip),
        "render": "mean",
        "fps": 0,
        "job": "",
    }


def test_every_named_endpoint_answers_through_its_view_api_names(client, files, tmp_path, capfd):
    from tests.video_clips import write_clip

    write_clip(tmp_path / "clip.mp4", 6, 64, 48)
    samples = _sample_inputs(files, str(tmp_path / "clip.mp4"))
    answered = {}
    for name, endpoint in _api(client).items():
        kwargs = {p["parameter_name"]: samples[p["parameter_name"]] for p in endpoint["parameters"]}
        if name == "/match_point":  # a click on image A; without one, a readable message
            with pytest.raises(Exception, match="answers a click on image A"):
                client.predict(**kwargs, api_name=name)
            continue
        out = client.predict(**kwargs, api_name=name)
        answered[name] = out if isinstance(out, tuple) else (out,)
        assert len(answered[name]) == len(endpoint["returns"]), name
    assert "row 2, col 3" in answered["/query"][9] and answered["/clear"][0] == ""
    assert "head 2" in answered["/heads"][11] and "head 1" not in answered["/heads"][11]
    assert answered["/video_cancel"][0] == "No video job is running."
    assert "Traceback" not in capfd.readouterr().err


def test_documented_six_input_call_after_model_controls_and_heads_the_model_lacks(client, files):
    client.predict(MODEL_IDS[0], api_name="/model_controls")
    assert "Showing **tiny_ep1**" in _analyse(client, files, 0.6, gt=False)[6]
    out = _explore(client, files, "/heads", heads=[0, 1, 2, 7])  # head 7: not in this model
    summary, _, _ = _download(client)
    assert summary["composite_heads"] == [0, 1, 2] and "head 2" in out[11]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("layer", 40, "layer 40 is out of range for a model with 2 blocks; use 0 to 1"),
        ("image_size", 4096, "DINO_MAX_IMAGE_SIZE"),
    ],
)
def test_out_of_range_values_get_the_services_own_message(client, files, field, value, expected):
    kwargs = {"layer": 1, "image_size": 64, field: value}
    with pytest.raises(Exception, match=re.escape(expected)):
        client.predict(
            handle_file(files["image"]),
            MODEL_IDS[-1],
            kwargs["image_size"],
            "square",
            0.6,
            None,
            kwargs["layer"],
            api_name="/analyze",
        )


def test_the_size_control_reaches_the_services_limit(client, live):
    limit = httpx.get(f"{live.backend_url}/models").json()["limits"]["max_image_size"]
    slider = client.predict(MODEL_IDS[-1], api_name="/model_size")
    assert slider["maximum"] == limit // TINY["patch_size"] * TINY["patch_size"]


def test_a_file_that_is_not_an_image_is_a_readable_message(client, tmp_path, capfd):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(Exception) as err:
        client.predict(
            handle_file(str(text)), MODEL_IDS[-1], 64, "square", 0.6, None, api_name="/analyze"
        )
    assert "notes.txt is not an image the app can read" in str(err.value)
    assert "PNG, JPEG" in str(err.value) and "Traceback" not in capfd.readouterr().err
