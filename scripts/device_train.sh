#!/usr/bin/env bash
# Train the 3D network on a lent GPU machine for MINUTES, resuming from the shipped weights, and time inference there.
# The checkpoint (best validation Dice and last state), the log, the validation metrics and the timings land in $OUT.
#
# Prepare once on this machine:  bash scripts/device_prepare.sh        (wheels + SPM members into .device/)
# Run through the device tool:   command "bash scripts/device_train.sh 6", carry [".device"], timeout_s 600
#                                (6 min of training + about 2 min of set-up and inference: inside one 10-minute call)
# Test it here on the CPU:       PY=.venv/bin/python OUT=runs/device_test WORKERS=2 bash scripts/device_train.sh 1
#
# Stage 3 of docs/README.md "Training", at scale: streamed label-map-synthesised pairs (new anatomy and contrasts
# every step) mixed with the 64 template training pairs, at 4 mm (the same function as the 2 mm network).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-6}
PY=${PY:-python3}
WORKERS=${WORKERS:-12}
OUT=${OUT:-runs/device}
RUN=${RUN:-/tmp/xmreg_device}
SEED=${SEED:-0}        # a new seed for a run that continues an earlier one draws new synthesised pairs
rm -rf "$RUN" && mkdir -p "$OUT" "$RUN"   # every call starts from --pretrained (a warm machine keeps /tmp)
[ -d .device/whl ] || { echo "error: .device/ missing: run scripts/device_prepare.sh here and carry .device" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$RUN/site" .device/whl/*.whl
export PYTHONPATH="$RUN/site:$PWD/.device/site:$PWD" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"

start=$(date +%s)
"$PY" -m monai.bundle run --config_file "['configs/common.json','configs/train.json']" --bundle_root "$PWD" \
    --pretrained models/model.pt --spacing_mm 4.0 --size_divisor 8 --sample_dir "$RUN/sample_4mm" \
    --sample_pairs '{"n_train": 64, "n_val": 4, "n_test": 0}' --network_def#input_downsample 0 --loss#downsample 0 \
    --training_data @synth#mixed_dataset --synth#pairs_per_epoch 448 --train#dataloader#num_workers "$WORKERS" \
    --learning_rate 0.0005 --val_interval 2 --train#trainer#max_epochs 100000 --time_limit_s $((MINUTES * 60)) \
    --seed "$SEED" --ckpt_dir "$RUN/ckpt" --output_dir "$RUN/out" > "$OUT/train.log" 2>&1
echo "trained for $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
cp "$(ls -t "$RUN"/ckpt/last_*.pt | head -1)" "$OUT/last.pt"                 # model + optimiser + trainer: resumable
"$PY" -c "import torch, sys; torch.save(torch.load(sys.argv[1], weights_only=True)['model'], sys.argv[2])" "$OUT/last.pt" "$OUT/model_last.pt"
cp "$RUN/ckpt/model.pt" "$OUT/model.pt" 2>/dev/null || cp "$OUT/model_last.pt" "$OUT/model.pt"   # best validation Dice, if validated
cp "$RUN/out/metrics.csv" "$OUT/metrics.csv" 2>/dev/null || true

# inference time on this machine: the sample T2 -> T1 pair at 2 mm, network only and with refinement, new weights
"$PY" -c "from bundle.data.sample import ensure_sample_datalist as e; e('$RUN/demo', n_train=0, n_val=0, n_test=1, spatial_dims=3, spacing_mm=2.0)"
pair="--fixed $RUN/demo/test/0000/fixed.nii.gz --moving $RUN/demo/test/0000/moving.nii.gz"
pair="$pair --fixed_label $RUN/demo/test/0000/fixed_label.nii.gz --moving_label $RUN/demo/test/0000/moving_label.nii.gz"
for refine in false true; do
    "$PY" -m monai.bundle run --config_file "['configs/common.json','configs/inference.json']" --bundle_root "$PWD" \
        $pair --checkpoint "$OUT/model.pt" --refine $refine --overwrite true --output_dir "$RUN/reg_$refine" \
        > "$RUN/reg_$refine.log" 2>&1 || tail -5 "$RUN/reg_$refine.log"
done
"$PY" - "$RUN" "$OUT" <<'PYEOF'
import json, sys
run, out = sys.argv[1], sys.argv[2]
rows = {}
for refine in ("false", "true"):
    try:
        m = json.load(open(f"{run}/reg_{refine}/metrics.json"))
        rows[f"refine_{refine}"] = {"dice_mean": m.get("dice_mean"), "seconds": m.get("seconds")}
    except OSError as e:
        rows[f"refine_{refine}"] = {"error": str(e)}
json.dump(rows, open(f"{out}/inference.json", "w"), indent=2)
print(json.dumps(rows, indent=1))
PYEOF
