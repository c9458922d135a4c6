#!/usr/bin/env bash
# The GPU targets of the performance issue, measured in one call on a machine that has no network:
# small_16k, bf16, 8 s clip, 25 steps; ours against the official code (warm end to end, cold) and
# our peak VRAM with offload_to_cpu. Random weights in the released formats, as on the CPU.
#
#   bash benchmarks/gpu_targets.sh bundle   # here, with network: fills .gpu-bundle/ (git-ignored)
#   bash benchmarks/gpu_targets.sh run      # there, from the repository root, .gpu-bundle beside it
#
# bundle needs the parity kit (PARITY_KIT, default ../shared/parity-kit) and the official source
# exported by its setup_ref.sh (SELVA_REF_SRC, default $SELVA_WORK/ref-src). It downloads, as
# wheels for the GPU machine's Python (GPU_PYTHON_VERSION, default 3.12, manylinux x86-64), the
# packages both codebases need that a PyTorch image usually lacks (BUNDLE_WHEELS), and copies the
# kit's scripts and the official `selva` package. Nothing fetched goes into git: .gpu-bundle is
# ignored. About 55 MB.
#
# run installs the wheels into a private folder, builds the fake Hugging Face cache and weights
# (kit scripts, ~2 min), an 8 s test video, then runs benchmarks/side_by_side.py twice and
# benchmarks/bench_stages.py once, writing logs and JSON to $OUT (or $SELVA_WORK/gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${SELVA_GPU_BUNDLE:-.gpu-bundle}

# open_clip_torch (+ftfy, wcwidth) and av: both sides; pyloudnorm: ours; omegaconf, colorlog and
# librosa 0.11 (+ its audio I/O and resampler): the official side. transformers, huggingface_hub
# and tokenizers at the parity kit's versions: the kit's fake T5 checkpoint is built for
# transformers 4 (5 counts its parameters otherwise) and the official code needs huggingface_hub
# < 1. Anything else comes from the PyTorch image.
BUNDLE_WHEELS=("av>=14.2" open_clip_torch==3.3.0 ftfy wcwidth pyloudnorm omegaconf==2.4.0 colorlog
               librosa==0.11.0 audioread soundfile cffi pycparser soxr pooch platformdirs decorator
               transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2)

bundle() {
    local kit=${PARITY_KIT:-../shared/parity-kit}
    local work=${SELVA_WORK:-${TMPDIR:-/tmp}/selva-harness}
    local ref=${SELVA_REF_SRC:-$work/ref-src}
    local pyver=${GPU_PYTHON_VERSION:-3.12}
    # the bundle folder is replaced as a whole: only ever one that git ignores
    git check-ignore -q "$BUNDLE/" || { echo "$BUNDLE is not git-ignored: refusing to fill it" >&2; exit 1; }
    [ -f "$kit/make_fake_weights.py" ] || { echo "no parity kit at $kit (set PARITY_KIT)" >&2; exit 1; }
    [ -f "$ref/selva/model/networks_generator.py" ] || {
        echo "no official source at $ref: run the parity kit's setup_ref.sh (or set SELVA_REF_SRC)" >&2; exit 1; }
    # filled aside and moved into place at the end, so a failed bundle leaves no half-filled one
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT  # global, so the trap still sees it when the script exits
    mkdir -p "$tmp/wheels" "$tmp/kit" "$tmp/ref-src"
    cp "$kit"/*.py "$tmp/kit/"
    cp -r "$ref/selva" "$tmp/ref-src/"
    find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
    local wheel
    for wheel in "${BUNDLE_WHEELS[@]}"; do
        # one package at a time, so that a failure names the package that has no such wheel
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform any -d "$tmp/wheels" "$wheel" 2>/dev/null \
            || { echo "no wheel of $wheel for Python $pyver" >&2; exit 1; }
    done
    rm -rf "$BUNDLE"
    mv "$tmp" "$BUNDLE"
    du -sh "$BUNDLE"
}

run() {
    [ -d "$BUNDLE/wheels" ] || { echo "no $BUNDLE here: make it with '$0 bundle' on a machine with network and copy it here" >&2; exit 1; }
    export SELVA_WORK=${SELVA_WORK:-${TMPDIR:-/tmp}/selva-harness}
    export SELVA_REF_SRC=$PWD/$BUNDLE/ref-src HF_HOME=$SELVA_WORK/hf-home PYTHONUNBUFFERED=1
    local out=${OUT:-$SELVA_WORK/gpu-out} py=${PYTHON:-python3}
    mkdir -p "$out" "$SELVA_WORK/video"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SELVA_WORK/site" "$BUNDLE"/wheels/*.whl
    export PYTHONPATH=$SELVA_WORK/site${PYTHONPATH:+:$PYTHONPATH}
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else "")' | tee "$out/device.txt"
    local kit=$BUNDLE/kit
    "$py" "$kit/make_fake_hub.py" --only clip,t5 > "$out/fake_hub.log" 2>&1
    "$py" "$kit/make_fake_weights.py" small_16k --out "$SELVA_WORK/models" --hf-home "$HF_HOME" \
        > "$out/fake_weights.log" 2>&1
    # GPU_DEVICE / GPU_STEPS / GPU_SECONDS change the work (a dry run on the CPU: cpu, 2, 2)
    local device=${GPU_DEVICE:-cuda} steps=${GPU_STEPS:-25} seconds=${GPU_SECONDS:-8}
    "$py" "$kit/make_test_video.py" "$SELVA_WORK/video/test${seconds}s" --seconds "$seconds" > /dev/null
    local common=(--device "$device" --precision bf16 --steps "$steps" --durations "$seconds" --threads 0)
    "$py" benchmarks/side_by_side.py "${common[@]}" --official-python "$py" \
        --json "$out/side_by_side.json" 2>&1 | tee "$out/side_by_side.log"
    "$py" benchmarks/side_by_side.py "${common[@]}" --ours-only --offload offload_to_cpu \
        --json "$out/offload_to_cpu.json" 2>&1 | tee "$out/offload_to_cpu.log"
    "$py" benchmarks/bench_stages.py --device "$device" --precision bf16 --duration "$seconds" \
        --steps "$steps" --repeat 3 --models-dir "$SELVA_WORK/models" 2>&1 | tee "$out/stages.log"
}

case "${1:-}" in
    bundle) bundle ;;
    run) run ;;
    *) echo "usage: $0 bundle|run" >&2; exit 2 ;;
esac
