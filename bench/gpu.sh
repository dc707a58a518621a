#!/usr/bin/env bash
# The speed benchmark (bench/speed.py) on a machine with an NVIDIA GPU; a few minutes, under 8 in all.
#
#   OUT=/some/folder bash bench/gpu.sh          # from the repository root (or anywhere: it cd's there)
#
# Writes $OUT/speed-gpu.md (the results: the blog loop vs tuner for 8 trials on the GPU, the training
# step's GFLOP/s, and the fused-K scan: K = 1, 8, 32, 64, 128 trials per fused model, bf16 AMP off/on,
# in trials per hour next to one trial at a time per worker process), $OUT/speed-gpu.log (all output)
# and $OUT/nvidia-smi.txt. Uses the Python that can already `import tuner`; only when none can, it
# creates .venv-gpu (seeing the system's packages, so an installed CUDA torch is reused) and installs
# this project into it with `pip install -e .`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that gets the results}"
mkdir -p "$OUT"
BUDGET_S=470  # 8 minutes, less a margin for writing the results

PY=python3
if ! "$PY" -c "import tuner" 2>/dev/null; then
    if ! { [ -x .venv-gpu/bin/python ] && .venv-gpu/bin/python -c "import tuner" 2>/dev/null; }; then
        echo "import tuner failed; creating .venv-gpu and running pip install -e ." >&2
        python3 -m venv --system-site-packages .venv-gpu
        if .venv-gpu/bin/python -c "import torch, torchvision, optuna, sqlalchemy, sklearn, typer, rich, PIL" 2>/dev/null; then
            .venv-gpu/bin/python -m pip install -q --no-build-isolation --no-deps -e .  # deps already here: no download
        else
            .venv-gpu/bin/python -m pip install -q -e .
        fi
    fi
    PY=.venv-gpu/bin/python
fi

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch in $PY sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)')); see $OUT/nvidia-smi.txt" >&2
    exit 2
fi

LEFT=$(( BUDGET_S - SECONDS ))
if [ "$LEFT" -lt 120 ]; then
    echo "error: only $LEFT s of the 8-minute budget left after the set-up; run again now that .venv-gpu exists" >&2
    exit 2
fi
echo "running bench/speed.py --device cuda with $PY (at most $LEFT s)" >&2
timeout --signal=INT --kill-after=20 "$LEFT" "$PY" bench/speed.py --device cuda --out "$OUT/speed-gpu.md" 2>&1 | tee "$OUT/speed-gpu.log"
