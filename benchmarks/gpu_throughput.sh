#!/usr/bin/env bash
# DINO training throughput on one GPU: ViT-S/16, 2x224 + 10x96 crops, batch 64 and 128,
# synthetic and real JPEGs, our default path against the authors' baseline path.
#
# 1. Once, where the CIFAR-10 archive is (CIFAR_ARCHIVE, default $DINO_DATA_DIR/cifar10-jpg.tar.gz):
#    build the real-JPEG set, CIFAR-10 upscaled to 256 px (about 31 MB, in .data/, git-ignored):
#        bash benchmarks/gpu_throughput.sh prepare
#    (copy .data/cifar10_up256 to the GPU machine if that is another one: docs/TRAINING.md).
# 2. On the GPU machine, from the repository root:
#        bash benchmarks/gpu_throughput.sh
#    It prints one summary line per run (img/s, MFU, peak memory, data-wait fraction) and
#    writes every run's JSON plus gpu_throughput.json under $OUT_DIR (default runs/gpu_throughput).
#
# The default path: batched JPEG decode (nvjpeg) + GPU multi-crop, bf16, SDPA, torch.compile,
# fused AdamW. The baseline: PIL multi-crop in workers, fp16, no compile, explicit attention.
# Runs go in priority order; with BUDGET_S set (seconds for the whole script, default: no limit),
# a run is skipped when too little of it is left.
# CPU smoke run of this script: OUT_DIR=/tmp/gt PYTHON=.venv/bin/python WARMUP=1 ITERS=2 EXTRA_ARGS="--device cpu
#   --arch vit_tiny --patch_size 8 --global_crops_size 32 --local_crops_size 16 --local_crops_number 2
#   --out_dim 128 --batch_size_per_gpu 4 --threads 1 --num_workers 1 --synthetic_size 64 48" bash benchmarks/gpu_throughput.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
REAL_DIR="${REAL_DIR:-.data/cifar10_up256}"

prepare() {
  local archive="${CIFAR_ARCHIVE:-${DINO_DATA_DIR:-.}/cifar10-jpg.tar.gz}" per_class="${PER_CLASS:-400}"
  [ -f "$archive" ] || { echo "no $archive; set CIFAR_ARCHIVE" >&2; exit 1; }
  "${PYTHON}" - "$archive" "$REAL_DIR" "$per_class" <<'EOF'
import io, sys, tarfile
from collections import Counter
from pathlib import Path
from PIL import Image
archive, out, per_class = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
taken = Counter()
with tarfile.open(archive) as tar:
    for member in tar:
        parts = Path(member.name).parts
        if not member.isfile() or "train" not in parts or not member.name.endswith(".jpg"):
            continue
        label = parts[-2]
        if taken[label] >= per_class:
            continue
        image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
        (out / label).mkdir(parents=True, exist_ok=True)
        image.resize((256, 256), Image.BICUBIC).save(out / label / Path(member.name).name, quality=90)
        taken[label] += 1
print(f"wrote {sum(taken.values())} images ({len(taken)} classes) to {out}")
EOF
}

if [ "${1:-}" = "prepare" ]; then prepare; exit 0; fi

OUT_DIR="${OUT_DIR:-runs/gpu_throughput}"
mkdir -p "$OUT_DIR"
BUDGET_S="${BUDGET_S:-1000000}"
START=$SECONDS
COMMON=(--arch vit_small --patch_size 16 --global_crops_size 224 --local_crops_size 96 --local_crops_number 10
        --device cuda --warmup "${WARMUP:-6}" --iters "${ITERS:-40}" --synthetic_images 384 --prefetch_factor 2)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PYTHON}" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
echo "cpus: $(nproc)"; df -h /dev/shm | tail -n 1

bench() {  # bench NAME MIN_SECONDS ARGS...: one run, skipped when the budget is nearly spent
  local name="$1" need="$2"; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt "$need" ]; then echo "SKIPPED $name: ${left}s of the budget left, needs ${need}s"; return; fi
  echo "=== $name (${left}s left)"
  # shellcheck disable=SC2086  # EXTRA_ARGS (word-split on purpose) overrides anything, e.g. for a CPU smoke run
  timeout --kill-after=10 "$left" "${PYTHON}" -m benchmarks.train_throughput "${COMMON[@]}" "$@" ${EXTRA_ARGS:-} \
    --json "$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log" | grep -v '^$'
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "FAILED $name (rc $rc); last log lines:"; tail -n 15 "$OUT_DIR/$name.log"; }
}

REAL=()
if [ -d "$REAL_DIR" ]; then REAL=(--data_path "$REAL_DIR"); else echo "no $REAL_DIR: real-JPEG runs skipped"; fi

# Batch 64 first (the 8 GB memory goal is at batch 64); the real-data runs reuse the compiled
# graphs of the same shapes from inductor's on-disk cache, batch 128 compiles anew.
bench synthetic_b64_default 120 --synthetic --batch_size_per_gpu 64
bench synthetic_b64_baseline 45 --synthetic --batch_size_per_gpu 64 --baseline
if [ ${#REAL[@]} -gt 0 ]; then
  bench real_b64_default 60 "${REAL[@]}" --batch_size_per_gpu 64
  bench real_b64_baseline 40 "${REAL[@]}" --batch_size_per_gpu 64 --baseline
fi
bench synthetic_b128_default 120 --synthetic --batch_size_per_gpu 128
bench synthetic_b128_baseline 45 --synthetic --batch_size_per_gpu 128 --baseline
if [ ${#REAL[@]} -gt 0 ]; then
  bench real_b128_default 60 "${REAL[@]}" --batch_size_per_gpu 128
  bench real_b128_baseline 40 "${REAL[@]}" --batch_size_per_gpu 128 --baseline
fi
bench synthetic_b64_default_decode_in_workers 60 --synthetic --batch_size_per_gpu 64 --decode_on workers
# inductor + bf16 against eager on the same random crops (3 steps, batch 16, no drop path)
bench equivalence_check 100 --synthetic --batch_size_per_gpu 16 --iters 3 --check_equivalence

"${PYTHON}" - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_throughput.json"}
checks = {name: runs.pop(name) for name in [n for n, rep in runs.items() if "results" not in rep]}
print(f"{'run':42s} {'img/s':>8s} {'MFU':>6s} {'peak GB':>8s} {'data wait':>9s}")
for name, rep in runs.items():
    r = rep["results"][0]
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"{name:42s} {r['img_per_s']:8.1f} {mfu:>6s} {r['peak_memory_gb']:8.2f} {100 * r['data_wait_fraction']:8.1f}%")
for data in ("synthetic", "real"):
    for batch in (64, 128):
        fast, base = runs.get(f"{data}_b{batch}_default"), runs.get(f"{data}_b{batch}_baseline")
        if fast and base:
            ratio = fast["results"][0]["img_per_s"] / base["results"][0]["img_per_s"]
            print(f"speed-up {data} batch {batch}: {ratio:.2f}x")
for name, check in checks.items():
    print(f"{name}: max loss gap {check['max_loss_gap']:.2e}, max weight gap {check['max_weight_gap']:.2e}, "
          f"ok={check['ok']}")
(out / "gpu_throughput.json").write_text(json.dumps({**runs, **checks}, indent=2))
EOF
echo "total ${SECONDS}s"
