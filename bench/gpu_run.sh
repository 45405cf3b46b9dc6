#!/usr/bin/env bash
# The CUDA checks of heterogeneous-batch serving as one run, for a lent GPU with a few minutes:
# the GPU-marked tests (gathered LoRA and the engine on fp32 / bf16 / nf4 / int8 bases against PEFT),
# then bench/hetero_lora_bench.py at the shape with PEFT's baseline script on the same card.
#
#   bash bench/gpu_run.sh OUTDIR [path/to/peft_baseline.py]
#
# PEFT runs one round per point and only up to 8 distinct adapters in-process (a PEFT round with
# 32 distinct adapters takes ~90 s on an H100); its 32-adapter figure comes from the baseline script.
set -uo pipefail
out=${1:?usage: bash bench/gpu_run.sh OUTDIR [peft_baseline.py]}
baseline=${2:-../shared/bench/peft_baseline.py}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 120 tests/test_lora_slot_bank.py tests/test_engine.py 2>&1 \
    | tee "$out/gpu_tests.log" | tail -15
python3 bench/hetero_lora_bench.py --device cuda --shape llama-3.2-1b --dtype bf16 --batch 32 --prompt 128 \
    --new 128 --adapters 32 --rounds 3 --sweep-rounds 2 --peft-rounds 1 --peft-max-distinct 8 \
    --rank-sweep-adapters 8 --step-samples 0 --load-trials 12 --peft-baseline "$baseline" \
    --plot "$out/hetero_lora_gpu.png" --save "$out/hetero_lora_gpu.json" 2>&1 | tee "$out/bench.log" | grep '^{"what"'
