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
# Then the ViSFT stage-2 step (issue 12, benchmarks/visft_step.py): ViT-B/16 at 224 px with
# q/v LoRA r 64, batch 8 (the official stage-2 batch), paper-scale frozen heads, one step per
# task (detection, segmentation, caption) of the zoo vs the official-code reference (loralib
# merged-ΔW qkv, Hugging Face AdamW loop) and loralib 0.1.1's input-side form, same weights and
# batch; fp32 parity of loss and LoRA gradients first, then bf16 autocast and fp32 timings.
#
# Usage (repository root or anywhere):   bash benchmarks/gpu.sh
#   QUICK=1   fewer timed steps (8 instead of 20; ViSFT: 5 instead of 15)
#   OUT=DIR   where results go (default: $OUT if set, else benchmarks/gpu-results)
#   LIMIT=S   wall-clock limit in seconds for the CLIP benchmark itself (default 480)
#   VISFT_LIMIT=S   the same for each ViSFT run (default 240)
#   SECTIONS="clip visft"   which entries run (default both)
# Writes DIR/gpu.md (table + summary line), DIR/gpu.json, DIR/gpu.log, DIR/nvidia-smi.txt,
# and DIR/visft_step_{bf16,fp32}.{md,json}.
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

SECTIONS="${SECTIONS:-clip visft}"
status=0
if [[ " $SECTIONS " == *" clip "* ]]; then
    args=(--gpu --json "$OUT_DIR/gpu.json")
    if [[ -n "${QUICK:-}" ]]; then args+=(--quick); fi
    set +e
    timeout "${LIMIT:-480}" python -m benchmarks.run "${args[@]}" \
        2> >(tee "$OUT_DIR/gpu.log" >&2) | tee "$OUT_DIR/gpu.md"
    status=${PIPESTATUS[0]}
    set -e
    echo "exit status: $status (124 = hit the ${LIMIT:-480} s limit)" | tee -a "$OUT_DIR/gpu.md"
fi

if [[ " $SECTIONS " == *" visft "* ]]; then
    repeats=15
    if [[ -n "${QUICK:-}" ]]; then repeats=5; fi
    for precision in bf16 fp32; do
        vargs=(--shape base --batch 8 --device cuda --warmup 3 --repeats "$repeats" --profile
               --json "$OUT_DIR/visft_step_$precision.json")
        if [[ $precision == bf16 ]]; then vargs+=(--amp bfloat16); fi
        set +e
        timeout "${VISFT_LIMIT:-240}" python -m benchmarks.visft_step "${vargs[@]}" \
            2> >(tee "$OUT_DIR/visft_step_$precision.log" >&2) | tee "$OUT_DIR/visft_step_$precision.md"
        vstatus=${PIPESTATUS[0]}
        set -e
        echo "exit status: $vstatus (124 = hit the ${VISFT_LIMIT:-240} s limit)" \
            | tee -a "$OUT_DIR/visft_step_$precision.md"
        if [[ $status -eq 0 ]]; then status=$vstatus; fi
    done
fi
exit "$status"
