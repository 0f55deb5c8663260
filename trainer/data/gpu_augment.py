"""DINO multi-crop augmentation on a batch of uint8 images already on the device.

The distribution is that of :class:`trainer.data.augment.DataAugmentationDINO` (same
:class:`~trainer.data.augment.ViewSpec` probabilities, same constants), but every op runs
batched on tensors with independent random parameters per sample and per view, and with
no host synchronisation (no ``.item()``, no data-dependent Python branches).

Views with the same crop size and scale (the two globals; all the locals) are processed
together as one batch of ``views * B`` rows, each row with its own view's probabilities.
The ops live in their own modules: random resized crops and PIL-exact bicubic resampling
(:mod:`trainer.data.gpu_crops`), colour jitter, grayscale and solarize
(:mod:`trainer.data.gpu_color`), Gaussian blur (:mod:`trainer.data.gpu_blur`).

Typical use in the training loop (DataLoader workers only read bytes)::

    folder = EncodedImageFolder(root)
    loader = DataLoader(folder, batch_size=64, num_workers=8, collate_fn=collate_bytes)
    multicrop = GPUMultiCrop((0.4, 1.0), (0.05, 0.4), 10).to("cuda")
    for blobs, indices in loader:
        images, indices, skipped = drop_undecoded(decode_jpegs(blobs, "cuda"), indices)
        views = multicrop(images)  # [global1, global2, local * 10], each (len(images), 3, S, S)

Memory: the list input is zero-padded to the largest image of the batch, so very large
images should be decoded at reduced size (``decode_jpegs(..., "cpu", draft_size=...)``).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.data.augment import BLUR_SIGMA, CROP_RATIO, Recorder, ViewSpec, dino_views
from trainer.data.gpu_blur import blur_kernel_size, gaussian_blur
from trainer.data.gpu_color import color_jitter, grayscale, solarize
from trainer.data.gpu_crops import resized_crops, sample_crop_boxes
from trainer.data.gpu_rows import coins, select, uniform
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD


def pad_to_batch(
    images: list[torch.Tensor] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad uint8 (3,H,W) images into a (B,3,Hmax,Wmax) batch; also heights and widths."""
    if isinstance(images, torch.Tensor):
        _check_image(images, "images", batched=True)
        b, _, height, width = images.shape
        full = torch.full((b,), height, device=images.device, dtype=torch.int64)
        return images, full, torch.full((b,), width, device=images.device, dtype=torch.int64)
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one uint8 (3,H,W) tensor")
    for index, image in enumerate(images):
        _check_image(image, f"images[{index}]", batched=False)
    device = images[0].device
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.uint8, device=device)
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([list(i.shape[1:]) for i in images], dtype=torch.int64)
    if device.type == "cuda":
        sizes = sizes.pin_memory()
    sizes = sizes.to(device, non_blocking=True)
    return batch, sizes[:, 0], sizes[:, 1]


def _check_image(image: torch.Tensor, name: str, batched: bool) -> None:
    want = "(B,3,H,W)" if batched else "(3,H,W)"
    if image.dtype != torch.uint8 or image.dim() != (4 if batched else 3) or image.shape[-3] != 3:
        raise ValueError(
            f"{name} must be a uint8 {want} tensor, got {image.dtype} of shape {tuple(image.shape)}"
        )


def _group_views(views: list[ViewSpec]) -> list[list[int]]:
    groups: dict[tuple[int, tuple[float, float]], list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault((view.size, view.scale), []).append(index)
    return list(groups.values())


class GPUMultiCrop(nn.Module):
    """Batched DINO multi-crop: uint8 images -> normalised [global1, global2, local * N] views.

    Each view is a (B, 3, S, S) float batch. ``views`` and ``record`` behave as in
    :class:`trainer.data.augment.DataAugmentationDINO`; ``record(view_name, op_name, value)``
    receives per-sample bool masks (or the (B, 4) crop boxes for ``"crop"``) of each view.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float],
        local_crops_scale: tuple[float, float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
    ) -> None:
        super().__init__()
        self.views = dino_views(
            global_crops_scale,
            local_crops_scale,
            local_crops_number,
            global_crops_size,
            local_crops_size,
        )
        self.record: Recorder | None = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(
        self, images: list[torch.Tensor] | torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        batch, heights, widths = pad_to_batch(images)
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(self.views)
        with torch.autocast(
            batch.device.type, enabled=False
        ):  # float32 even inside a training autocast
            for group in _group_views(self.views):
                crops = self._augment_group(
                    batch, heights, widths, [self.views[i] for i in group], generator
                )
                for view_index, crop in zip(group, crops.chunk(len(group)), strict=True):
                    outputs[view_index] = crop
        return outputs

    def _probabilities(
        self, views: list[ViewSpec], attribute: str, b: int, device: torch.device
    ) -> torch.Tensor:
        return torch.cat(
            [torch.full((b,), float(getattr(v, attribute)), device=device) for v in views]
        )

    def _decide(
        self,
        views: list[ViewSpec],
        op: str,
        b: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        mask = coins(self._probabilities(views, f"{op}_p", b, device), generator)
        self._report(views, op, mask, b)
        return mask

    def _report(self, views: list[ViewSpec], op: str, values: torch.Tensor, b: int) -> None:
        if self.record is not None:
            for view, chunk in zip(views, values.split(b), strict=True):
                self.record(view.name, op, chunk)

    def _augment_group(
        self,
        batch: torch.Tensor,
        heights: torch.Tensor,
        widths: torch.Tensor,
        views: list[ViewSpec],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        b = batch.shape[0]
        device = batch.device
        size = views[0].size
        repeat = len(views)
        boxes = sample_crop_boxes(
            heights.repeat(repeat), widths.repeat(repeat), views[0].scale, CROP_RATIO, generator
        )
        self._report(views, "crop", boxes, b)
        x = resized_crops(batch, boxes, size)
        x = select(self._decide(views, "flip", b, device, generator), x.flip(-1), x)
        x = color_jitter(x, self._decide(views, "jitter", b, device, generator), generator)
        gray = grayscale(x).expand(-1, 3, -1, -1)
        x = select(self._decide(views, "grayscale", b, device, generator), gray, x)
        blur_mask = self._decide(views, "blur", b, device, generator)
        sigma = uniform((x.shape[0],), BLUR_SIGMA[0], BLUR_SIGMA[1], device, generator)
        x = select(blur_mask, gaussian_blur(x, sigma, blur_kernel_size(size)), x)
        x = select(self._decide(views, "solarize", b, device, generator), solarize(x), x)
        return (x - self.mean.to(device)) / self.std.to(device)
