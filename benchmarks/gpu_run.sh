#!/usr/bin/env bash
# The one prepared GPU run (docs/benchmarks.md "GPU run"): on the device machine, in the repository root,
# with .gpu/ carried (benchmarks/gpu_prepare.sh makes it here). Installs the carried wheels offline into
# /tmp/vdm-gpu/site, unpacks ComfyUI into /tmp/vdm-gpu/comfyhome, then runs benchmarks/gpu_run.py's stages so
# that all of them end within 560 s of this script's start; everything goes to $OUT (log.txt, results.jsonl,
# summary.md, vdm-gpu-16.safetensors), written as it is made.
#
# usage: bash benchmarks/gpu_run.sh [--dry-run] [--stages retrain unet train wan]
#   --dry-run: the same stages at tiny sizes on the CPU, within 1200 s, with the python3 first on PATH and
#   OUT=out/gpu-run unless OUT is set: what docs/benchmarks.md "GPU run" says to run here before the real run.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=560
for arg in "$@"; do [[ $arg == --dry-run ]] && BUDGET=1200; done
OUT=${OUT:-$PWD/out/gpu-run}
WORK=/tmp/vdm-gpu
rm -rf "$WORK" && mkdir -p "$WORK/comfyhome" "$OUT" || exit 1
exec > >(tee -a "$OUT/log.txt") 2>&1

echo "gpu_run.sh $*: $(date -u +%FT%TZ), $(uname -m), $(python3 -V 2>&1) at $(command -v python3), $(nproc) cores"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv 2>&1 || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .gpu/wheels/*.whl || { echo "the carried wheels did not install"; exit 1; }
python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); t.extraction_filter = getattr(tarfile, "data_filter", None)
t.extractall(sys.argv[2])' .gpu/comfyui.tar.xz "$WORK/comfyhome" || { echo "ComfyUI did not unpack"; exit 1; }  # no xz needed
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import av, torch, vdm_app.lib; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'av', av.__version__)" || exit 1
echo "setup took $(( $(date +%s) - T0 )) s"
python3 -u benchmarks/gpu_run.py --out "$OUT" --work "$WORK" --deadline $((T0 + BUDGET)) "$@"
