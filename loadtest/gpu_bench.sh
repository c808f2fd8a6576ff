#!/usr/bin/env bash
# The classifier and the pipeline on an NVIDIA GPU, in one prepared run.
#
#   bash loadtest/gpu_bench.sh OUT_DIR            on a GPU machine: installs what it needs
#   bash loadtest/gpu_bench.sh --dry-run OUT_DIR  anywhere: CPU provider, tiny sizes, no install
#
# On a GPU machine it makes a virtual environment `.venv-gpu` beside the repository's files
# (unless it exists), installs onnxruntime-gpu with its CUDA and cuDNN libraries (the `gpu`
# extra) and the project, builds the default models when `models/` is not built (torch CPU,
# the `build` extra), then writes to OUT_DIR:
#   classifier.json  loadtest/bench_gpu.py: CUDA provider, fp32 and fp16 graphs, with and
#                    without IO binding, batch sizes 1-256 and token budgets
#   pipeline.json    loadtest/bench_pipeline.py, `auto` target at saturation with the mock
#                    vLLM and the classifier on the GPU (`classifier.category_model.use_cpu: false`)
#   nvidia-smi.txt   the GPU, its driver and CUDA version
# The dry run does the same steps with the current Python, the CPU provider and tiny sizes;
# the test suite runs it.
set -euo pipefail

dry=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry=1
  shift
fi
out=${1:?usage: gpu_bench.sh [--dry-run] OUT_DIR}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export TOKENIZERS_PARALLELISM=false

if (( dry )); then
  py=${PYTHON:-python3}
  provider=cpu
  sizes=(--batch-sizes 1 4 --token-budgets 64 --texts 12 --trials 1 --threads 1)
  pipeline=(--requests 5 --duration 1 --concurrency 4 --warmup 2 --standalone-s 0.05)
else
  nvidia-smi > "$out/nvidia-smi.txt"
  if [[ ! -x .venv-gpu/bin/python ]]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install -q --upgrade pip
    # torch first, pinned to the CPU wheel: only the model build needs it.
    .venv-gpu/bin/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    .venv-gpu/bin/python -m pip install -q -e '.[gpu,build]'
  fi
  py=.venv-gpu/bin/python
  provider=cuda
  sizes=(--batch-sizes 1 8 32 64 128 256 --token-budgets 2048 8192 32768 --texts 4096 --trials 3)
  pipeline=(--requests 400 --duration 10 --concurrency 128 --warmup 40 --reps 2)
  "$py" -m loraroute model build
fi

"$py" loadtest/bench_gpu.py --provider "$provider" "${sizes[@]}" --out "$out/classifier.json"
"$py" loadtest/bench_pipeline.py --targets auto "${pipeline[@]}" \
  $([[ $provider == cuda ]] && echo --classifier-gpu) --out "$out/pipeline.json"
echo "wrote $out/classifier.json $out/pipeline.json"
