#!/usr/bin/env bash
# Start the GPU profile: build (or reuse) the classifier's engine for this GPU and TensorRT,
# then exec tritonserver with the flags the CPU launcher uses (strict readiness, no auto-complete,
# Python-backend shared memory sized for a full PIXELS batch). Extra arguments go to tritonserver.
set -euo pipefail

MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
ENGINE_CACHE="${ENGINE_CACHE:-/engines}"
SERVE_REPOSITORY="${SERVE_REPOSITORY:-/tmp/predilect-models}"
PYTHON_SHM_BYTES="${PYTHON_SHM_BYTES:-67108864}"
EXIT_TIMEOUT_S="${EXIT_TIMEOUT_S:-30}"

if [[ ! -f "${MODEL_REPOSITORY}/fundus_screen/config.pbtxt" ]]; then
    echo "predilect-entrypoint: ${MODEL_REPOSITORY} holds no fundus_screen ensemble;" \
        "mount a repository made by 'predilect assemble --profile gpu'" >&2
    exit 2
fi

# Work on a copy: the mounted repository may be read-only, and the engine is host-specific.
rm -rf "${SERVE_REPOSITORY}"
cp -a "${MODEL_REPOSITORY}" "${SERVE_REPOSITORY}"
mkdir -p "${ENGINE_CACHE}"

if [[ -f "${SERVE_REPOSITORY}/classifier/engine_build.json" ]]; then
    # Runs the decoder gate on this GPU (nvJPEG against the training decoder, when the repository
    # serves another), checks TensorRT is the image's series, builds with the accuracy gate (exit 1 when either
    # gate fails) or reuses ${ENGINE_CACHE}/sm<cc>-trt<version>/<onnx sha256>/model.plan.
    predilect trt-engine --model-repository "${SERVE_REPOSITORY}" --cache "${ENGINE_CACHE}"
fi

shm_prefix="predilect_$(hostname)_$$_"
exec tritonserver \
    --model-repository="${SERVE_REPOSITORY}" \
    --strict-readiness=true \
    --disable-auto-complete-config \
    --exit-timeout-secs="${EXIT_TIMEOUT_S}" \
    --backend-config=python,shm-region-prefix-name="${shm_prefix}" \
    --backend-config=python,shm-default-byte-size="${PYTHON_SHM_BYTES}" \
    --backend-config=python,shm-growth-byte-size="${PYTHON_SHM_BYTES}" \
    "$@"
