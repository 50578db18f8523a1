# Sourced by the tests/gpu/run_*_on_device.sh scripts: the results folder and log, the prebuilt kernels (.kern/*.tar.gz)
# and wheels (.whl/*.whl) when they were carried along, what the machine has, and `stage`.
#   STAGE_SHOW, STAGE_HIDE: the lines of a stage's output shown (grep -E patterns; all of them go to the log)
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
if ls .kern/*.tar.gz >/dev/null 2>&1; then
  mkdir -p /tmp/kern && for a in .kern/*.tar.gz; do tar xzf "$a" -C /tmp/kern; done
  # the archive holds the package alone; diffusers' attention dispatcher looks its version up in the metadata
  if [ -d /tmp/kern/sageattention ] && ! ls -d /tmp/kern/sageattention-*.dist-info >/dev/null 2>&1; then
    mkdir -p /tmp/kern/sageattention-2.2.0.dist-info
    printf 'Metadata-Version: 2.1\nName: sageattention\nVersion: 2.2.0\n' >/tmp/kern/sageattention-2.2.0.dist-info/METADATA
  fi
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/kern:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
for probe in "import torch; print('torch', torch.__version__)" \
  "import triton; print('triton', triton.__version__)" \
  "import sageattention.core as c; print('sageattention sm90', c.SM90_ENABLED)" \
  "import diffusers; print('diffusers', diffusers.__version__)" \
  "import torchao; print('torchao', torchao.__version__)"; do
  python3 -c "$probe" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
done
QUICK_FLAG=${QUICK:+--quick}
STAGE_SHOW=${STAGE_SHOW:-.}
STAGE_HIDE=${STAGE_HIDE:-^DEBUG}

stage() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name $(date +%T)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -vE "$STAGE_HIDE" | grep -E "$STAGE_SHOW" | tail -40
  echo "== $name ended: ${PIPESTATUS[0]} $(date +%T)" | tee -a "$LOG"
}
