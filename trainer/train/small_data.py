"""What a training folder's size means for a run, said at start, and the small-folder adaptation.

DINO learns from thousands of images. On a folder of a few hundred, the recipe's teacher
targets drift towards uniform (uniform collapse, DINO paper Sec. 5.3): measured with
``trainer/recipes/vit_tiny_duts_cpu.yaml`` on 200 DUTS-TR photos, the per-image teacher
entropy rose from 5.71 to 6.51 nats of log K = 6.93 in 39 steps, while on 3,518 photos it
stayed near 6.0 over the same steps. Centring outweighs sharpening there; a sharper teacher
(temperature 0.025 instead of 0.04) turned the drift around (entropy 4.00 -> 2.89 in 23 steps).

:func:`adapt_to_folder` logs, for a small folder, what a run on it can show, and with
``--adapt_small_data true`` (the CPU recipe sets it) lowers both teacher temperatures.
"""

from __future__ import annotations

import dataclasses
import logging

from trainer.train.flags import TrainConfig

logger = logging.getLogger(__name__)
SMALL_FOLDER_IMAGES = 1000
SMALL_FOLDER_TEACHER_TEMP = 0.025


def small_folder_changes(cfg: TrainConfig, images: int) -> dict[str, float]:
    """The flag values ``--adapt_small_data`` changes for a folder of ``images`` images."""
    if images >= SMALL_FOLDER_IMAGES or not cfg.adapt_small_data:
        return {}
    temps = {"warmup_teacher_temp": cfg.warmup_teacher_temp, "teacher_temp": cfg.teacher_temp}
    return {k: SMALL_FOLDER_TEACHER_TEMP for k, v in temps.items() if v > SMALL_FOLDER_TEACHER_TEMP}


def adapt_to_folder(cfg: TrainConfig, images: int, steps_per_epoch: int) -> TrainConfig:
    """``cfg`` for a folder of ``images`` images, with a start-up warning when it is small."""
    if images >= SMALL_FOLDER_IMAGES:
        return cfg
    changes = small_folder_changes(cfg, images)
    if changes:
        done = ", ".join(f"--{k} {getattr(cfg, k):g} -> {v:g}" for k, v in changes.items())
        action = f"adapted for it ({done}), against a drift of the teacher's targets to uniform"
    elif cfg.adapt_small_data:
        action = "the teacher temperatures are already at most 0.025; nothing to adapt"
    else:
        action = (
            "the teacher's targets may drift towards uniform (the 'uniform collapse' warning); "
            "--adapt_small_data true lowers the teacher temperatures against it"
        )
    logger.warning(
        "small training folder: %d images (%d steps per epoch, fewer than %d images); %s. "
        "A run this small shows whether the loss and the teacher entropies behave, not "
        "features that beat random initialisation on k-NN or the mask Jaccard.",
        images,
        steps_per_epoch,
        SMALL_FOLDER_IMAGES,
        action,
    )
    return dataclasses.replace(cfg, **changes) if changes else cfg
