#!/usr/bin/env bash
# A sweep on one GPU machine, split into SHARDS processes (one small model leaves the GPU mostly idle).
#   On the GPU machine, in the repo root, with Fashion-MNIST's four .gz files in data/fashion-mnist:
#   SHARDS=14 LIMIT=230 bash benchmarks/gpu_sweep.sh NAME [nlinit sweep options...]
# Results (without checkpoints) are packed into $OUT/NAME.tar.gz.
set -uo pipefail
NAME=$1
shift
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
ROOT=/tmp/sweep
t0=$(date +%s)
for ((i = 0; i < ${SHARDS:-8}; i++)); do
  timeout "${LIMIT:-450}" python3 -W ignore -m nlinit sweep --name "$NAME" --root "$ROOT" --shard "$i/${SHARDS:-8}" \
    --data-dir data/fashion-mnist --no-progress "$@" > "/tmp/shard$i.log" 2>&1 &
done
wait
echo "sweep: $(( $(date +%s) - t0 )) s"
python3 -m nlinit report "$ROOT/$NAME" | head -20
cat /tmp/shard*.log > "$ROOT/$NAME/shards.log"
tar -czf "$OUT/$NAME.tar.gz" --exclude='checkpoint.*' -C "$ROOT" "$NAME"
