#!/usr/bin/env bash
# The prepared GPU check: what a session runs when it is lent a GPU machine (the `device` tool:
# a fresh CUDA 13 image with Python 3.12, torch, timm and onnx, 15 minutes a session, at most
# 64 MiB carried with the working tree). One call of about 5 minutes, leaving time to rerun it.
#
#   here:   bash benchmarks/gpu_check.sh prepare /path/to/MaskCon_CVPR2023
#   there:  device run, command "bash benchmarks/gpu_check.sh run", carry [".device"],
#           timeout_s 540; the logs come back under $OUT
#
# prepare: downloads the Python 3.12 x86-64 wheels of what our package needs and that image lacks
#          (FAISS CPU, the FastAPI stack, Optuna) and copies MaskCon's model code (their code, for
#          benchmarks/bench_vs_maskcon.py only) into .device/ (git-ignored, about 25 MiB).
# run:     installs the wheels into /tmp/site, imports this checkout as `coins`, then
#          1. the tests marked gpu: coinsp re-clustering, the loss on CUDA, JPEG decoding on the GPU
#             (the FAISS GPU ones skip: faiss-gpu-cu12 and onnxruntime-gpu need CUDA 12 libraries
#             that with their wheels come to over 1 GB, far over the carry limit);
#          2. benchmarks/bench_vs_maskcon.py --device cuda: images/s of our step (fp32, bf16,
#             channels_last, torch.compile) against MaskCon's released step (issue 12: >= 1.2x).
set -euo pipefail
cd "$(dirname "$0")/.."
here=.device

wheels=(faiss-cpu fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv
    typing-inspection annotated-types uvicorn python-multipart optuna alembic sqlalchemy greenlet
    mako colorlog)

prepare() {
    local maskcon=${1:?usage: gpu_check.sh prepare /path/to/MaskCon_CVPR2023}
    [[ -f $maskcon/models/model.py ]] || { echo "expected MaskCon's models/model.py under $maskcon" >&2; exit 2; }
    rm -rf "$here.tmp" && mkdir -p "$here.tmp/whl" "$here.tmp/maskcon"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$here.tmp/whl" "${wheels[@]}"
    cp -r "$maskcon/models" "$here.tmp/maskcon/"
    rm -rf "$here" && mv "$here.tmp" "$here"  # whole or not at all
    du -sh "$here"
}

run() {
    local out=${OUT:-/tmp/gpu-check}
    mkdir -p "$out" /tmp/pkg
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$here"/whl/*.whl
    ln -sfn "$PWD" /tmp/pkg/coins
    export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 -c 'import torch, timm, faiss; print(torch.__version__, timm.__version__,
        faiss.__version__, torch.cuda.get_device_name())' | tee -a "$out/gpu.txt"
    local status=0
    # only the modules holding gpu tests: collecting the rest would import the test extras
    mapfile -t gpu_tests < <(grep -rl "pytest.mark.gpu" tests)
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" \
        2>&1 | tee "$out/tests.log" || status=1
    timeout 240 python3 benchmarks/bench_vs_maskcon.py --maskcon "$here/maskcon" --device cuda \
        2>&1 | tee "$out/vs-maskcon.log" || status=1
    return $status
}

case ${1:-} in
prepare) shift; prepare "$@" ;;
run) run ;;
*) echo "usage: gpu_check.sh prepare /path/to/MaskCon_CVPR2023 | run" >&2; exit 2 ;;
esac
