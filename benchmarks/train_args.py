"""The command-line flags of ``benchmarks/train_throughput.py``: model, data and run options."""

from __future__ import annotations

import argparse

from trainer.train.config import bool_flag


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="vit_small", help="vit_tiny, vit_small or vit_base")
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--out_dim", type=int, default=65536)
    p.add_argument("--global_crops_size", type=int, default=224)
    p.add_argument("--local_crops_size", type=int, default=96)
    p.add_argument("--local_crops_number", type=int, default=10)
    p.add_argument("--batch_size_per_gpu", type=int, default=64)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="auto: bf16 (fp16 for --baseline) on CUDA, fp32 on CPU",
    )
    p.add_argument("--seed", type=int, default=0)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_path", default=None, help="image folder (or use --synthetic)")
    p.add_argument("--synthetic", action="store_true", help="JPEGs generated in memory")
    p.add_argument("--synthetic_images", type=int, default=512, help="distinct JPEGs (cycled)")
    p.add_argument(
        "--synthetic_size",
        type=int,
        nargs=2,
        default=(500, 375),
        metavar=("W", "H"),
        help="width and height of the synthetic JPEGs",
    )
    p.add_argument("--num_workers", type=int, default=None, help="loader workers (CPUs - 1)")
    p.add_argument("--prefetch_factor", type=int, default=4, help="batches per worker ahead")
    p.add_argument(
        "--decode_on",
        default="auto",
        choices=("auto", "device", "workers"),
        help="GPU path: decode JPEGs in the step (nvjpeg) or in the workers",
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=1, help="timed windows per path")
    p.add_argument("--baseline", action="store_true", help="only the authors' configuration")
    p.add_argument("--compare", action="store_true", help="default and baseline, interleaved")
    p.add_argument("--gpu_augment", type=bool_flag, default=None, help="override augmentation")
    p.add_argument("--compile", type=bool_flag, default=None, help="override torch.compile")
    p.add_argument("--compile_mode", default=None, help="e.g. max-autotune-no-cudagraphs")
    p.add_argument("--compile_backend", default="inductor", help="aot_eager for tests")
    p.add_argument(
        "--check_equivalence",
        action="store_true",
        help="instead of timing: --iters steps of the eager and the compiled default "
        "path on the same random crops; prints loss and weight differences",
    )
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
