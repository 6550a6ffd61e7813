#!/usr/bin/env bash
# Make .gpu/, what benchmarks/gpu_run.sh needs on the GPU machine and cannot fetch there (it has no network; its
# image has CUDA torch, numpy, pillow, safetensors, tqdm, einops, transformers, scipy, ... but none of these):
#   .gpu/wheels/         PyAV (vdm_core.video_io), torchsde + trampoline (ComfyUI's samplers), and
#                        video-diffusion-pytorch + einops-exts + rotary-embedding-torch (the peer U-Net),
#                        pinned, for CPython 3.12 on x86-64 manylinux
#   .gpu/comfyui.tar.xz  the part of ComfyUI 0.3.64 that tests/harness/bench_comfy.py imports, as ComfyUI/...
# Run it here, in the repository root, once; .gpu/ is ignored by git and travels as the run tool's `carry`.
# It then installs the wheels offline the way the GPU machine will (pip --no-index, for Python 3.12), and
# checks that the tree that travels (tracked + untracked-not-ignored files + .gpu) stays under 64 MiB.
#
# usage: bash benchmarks/gpu_prepare.sh COMFYUI_GIT_DIR    (a clone or bare git dir holding commit $COMMIT)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?usage: bash benchmarks/gpu_prepare.sh COMFYUI_GIT_DIR}
COMMIT=a125cd84b054a57729b5eecab930ca9408719832   # ComfyUI v0.3.64, the oldest release the pack supports
PATHS=(comfy comfy_api comfy_execution comfyui_version.py folder_paths.py latent_preview.py node_helpers.py
       nodes.py protocol.py)                        # what the harness imports (sys.modules after bench_comfy's imports)
WHEELS=(av==18.1.0 torchsde==0.2.6 trampoline==0.1.2 video-diffusion-pytorch==0.7.0 einops-exts==0.0.4
        rotary-embedding-torch==0.9.1)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
LIMIT=$((64 * 1024 * 1024))

rm -rf .gpu && mkdir -p .gpu/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .gpu/wheels "${WHEELS[@]}"

# ComfyUI: git archive of the paths above at $COMMIT; blobs a partial mirror lacks are left out (only data
# files such as a tokenizer may be missing; a missing .py file stops here)
G=(git --git-dir="$(git -C "$SRC" rev-parse --absolute-git-dir)")
"${G[@]}" cat-file -e "$COMMIT^{commit}"
[[ $("${G[@]}" show "$COMMIT:comfyui_version.py") == *'"0.3.64"'* ]]
excludes=()
while read -r _ type sha path; do
  if [[ $type == blob ]] && ! "${G[@]}" cat-file -e "$sha" 2>/dev/null; then
    [[ $path == *.py ]] && { echo "ComfyUI source $path is missing from $SRC" >&2; exit 1; }
    excludes+=(":(exclude)$path")
  fi
done < <("${G[@]}" ls-tree -r "$COMMIT" -- "${PATHS[@]}")
"${G[@]}" archive --prefix=ComfyUI/ "$COMMIT" -- "${PATHS[@]}" "${excludes[@]}" \
    2> >(grep -v "^error: invalid object" >&2) | xz -6 -T1 > .gpu/comfyui.tar.xz
echo "$COMMIT ${#excludes[@]} data file(s) left out: ${excludes[*]:-none}" > .gpu/comfyui.txt

# the wheels install offline for the machine's interpreter (CPython 3.12, x86-64), as gpu_run.sh installs them
python3 -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" --target /tmp/vdm-gpu-prepare-check .gpu/wheels/*.whl

# the tree that travels
bytes=$( (git ls-files -z --cached --others --exclude-standard; find .gpu -type f -print0) \
         | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
ls -l .gpu/wheels .gpu/comfyui.tar.xz
echo "travels: $bytes bytes ($((bytes / 1024 / 1024)) MiB of 64) with .gpu carried"
(( bytes <= LIMIT )) || { echo "over the 64 MiB the run tool carries" >&2; exit 1; }
