"""The model card summary in dropdown labels and status lines (pure handlers, no service)."""

from __future__ import annotations

from app import model_handlers, rendering

LONG = (
    "ViT-S/16 pretrained with DINO on DUTS-TR for 100 epochs by this project's trainer; "
    "best head Jaccard 41.2 on DUTS-TE"
)
SHIPPED = {
    "id": "dino_vits16_duts",
    "arch": "vit_small",
    "patch_size": 16,
    "num_heads": 6,
    "trained": True,
    "available": True,
    "source": "file",
    "summary": LONG,
}
PLACEHOLDER = {
    "id": "placeholder_vits16",
    "arch": "vit_small",
    "patch_size": 16,
    "trained": False,
    "available": True,
    "source": "placeholder",
    "summary": "Random-init placeholder (ViT-S/16), untrained: its maps show no learned structure",
}


class CatalogClient:
    base_url = "http://fake:8000"

    def __init__(self, models: list[dict], default: str) -> None:
        self.catalog = {"default": default, "models": models}

    def models(self) -> dict:
        return self.catalog

    def attention(self, *args, **kwargs) -> dict:
        raise AssertionError("not called")


def test_label_shows_a_short_summary_whole():
    entry = {
        **SHIPPED,
        "summary": "Official DINO weights (Caron et al. 2021), ViT-S/16, ImageNet-1k",
    }
    assert model_handlers.model_label(entry) == (
        "dino_vits16_duts (vit_small/16, trained): "
        "Official DINO weights (Caron et al. 2021), ViT-S/16, ImageNet-1k"
    )


def test_label_cuts_a_long_summary_with_an_ellipsis():
    label = model_handlers.model_label(SHIPPED)
    card = label.split(": ", 1)[1]
    assert len(LONG) > model_handlers.LABEL_SUMMARY_CHARS
    assert (
        len(card) <= model_handlers.LABEL_SUMMARY_CHARS
        and card.endswith("…")
        and LONG.startswith(card[:-1])
    )


def test_label_without_summary_and_for_the_placeholder_is_unchanged():
    plain = {k: v for k, v in SHIPPED.items() if k != "summary"}
    assert model_handlers.model_label(plain) == "dino_vits16_duts (vit_small/16, trained)"
    assert (
        model_handlers.model_label({**SHIPPED, "summary": None})
        == "dino_vits16_duts (vit_small/16, trained)"
    )
    assert (
        model_handlers.model_label(PLACEHOLDER)
        == "placeholder_vits16 (vit_small/16, random weights)"
    )


def test_unavailable_label_keeps_the_reason_after_the_summary():
    label = model_handlers.model_label({**SHIPPED, "available": False, "error": "cannot load it"})
    assert "…" in label and label.endswith(" - unavailable: cannot load it")


def test_status_line_shows_the_whole_summary_of_the_default():
    main, _, _, status = model_handlers.list_models(
        CatalogClient([SHIPPED, PLACEHOLDER], "dino_vits16_duts")
    )
    assert main.value == "dino_vits16_duts"
    assert "Default **dino_vits16_duts**: trained weights (" + LONG + ")." in status
    assert main.choices[0][0].startswith(
        "dino_vits16_duts (vit_small/16, trained): ViT-S/16 pretrained"
    )


def test_placeholder_status_line_keeps_its_warning():
    _, _, _, status = model_handlers.list_models(CatalogClient([PLACEHOLDER], "placeholder_vits16"))
    assert "random weights: structure here comes from colour, not learning" in status
    assert "Random-init placeholder (ViT-S/16)" not in status  # the card is not repeated


def test_analysis_status_line_shows_the_summary():
    result = {
        "model": "dino_vits16_duts",
        "arch": "vit_small",
        "patch_size": 16,
        "num_heads": 6,
        "trained": True,
        "summary": "ViT-S/16 on DUTS-TR",
        "grid": [2, 3],
        "image_size": [32, 48],
        "params": {"threshold": 0.6},
        "timings_ms": {"total": 5.0},
    }
    assert "trained weights (ViT-S/16 on DUTS-TR)." in rendering.status_text(result)
    assert "trained weights. Image" in rendering.status_text({**result, "summary": None})


def test_card_text_is_one_line_and_ignores_non_strings():
    assert rendering.card_text("a\n  card\t here") == "a card here"
    assert (
        rendering.card_text(None) == rendering.card_text(41.2) == rendering.card_text("   ") == ""
    )
    assert rendering.card_text("abcdef", limit=4) == "abc…"
