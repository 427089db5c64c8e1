#!/usr/bin/env bash
# GPU benchmark (issue 3, item 3), one prepared script for one GPU machine:
# ViT-B/16 CLIP at 224 px (text 512 × 12, context 77), batch 256, against open_clip's CLIP +
# ClipLoss in the same run, interleaved step by step:
#   - fp32 (TF32) step: zoo through lightning.Trainer vs plain loop vs open_clip;
#   - bf16 autocast ("bf16-mixed"): bf16_speedup, speed vs open_clip bf16, MFU
#     (model FLOPs / step time, against the measured bf16 matmul ceiling and the data-sheet peak);
#   - torch.compile: zoo and open_clip encoders compiled (compile_speedup, compile time);
#   - fused AdamW vs foreach vs for-loop optimiser step on the ViT-B/16 parameters;
#   - zero-shot throughput and the data pipeline (0/4/8/14 workers) against the step demand.
#
# Usage (repository root or anywhere):   bash benchmarks/gpu.sh
#   QUICK=1   fewer timed steps (8 instead of 20)
#   OUT=DIR   where results go (default: $OUT if set, else benchmarks/gpu-results)
#   LIMIT=S   wall-clock limit in seconds for the benchmark itself (default 480)
# Writes DIR/gpu.md (table + summary line), DIR/gpu.json, DIR/gpu.log, DIR/nvidia-smi.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT_DIR="${OUT:-benchmarks/gpu-results}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$OUT_DIR/nvidia-smi.txt"
python - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0))
EOF

args=(--gpu --json "$OUT_DIR/gpu.json")
if [[ -n "${QUICK:-}" ]]; then args+=(--quick); fi
set +e
timeout "${LIMIT:-480}" python -m benchmarks.run "${args[@]}" \
    2> >(tee "$OUT_DIR/gpu.log" >&2) | tee "$OUT_DIR/gpu.md"
status=${PIPESTATUS[0]}
set -e
echo "exit status: $status (124 = hit the ${LIMIT:-480} s limit)" | tee -a "$OUT_DIR/gpu.md"
exit "$status"
