# Call 3: GPU 0 the rest of the first repro, the ip_adapter_scale experiment and the no-op repro; GPU 1 training
# compiled cold then warm (1 GPU, batch 4); then both GPUs: 2-GPU training (DDP).
source .device/setup.sh > /dev/null 2>&1 || { echo setup failed; exit 1; }
R=/tmp/res3; rm -rf $R; mkdir -p $R
TR="bench/bench_train.py --impl ours --batch-sizes 4 --compile blocks --compile-mode reduce-overhead --steps 10"
DR="python3 -m torch.distributed.run --standalone --nproc_per_node 2"
( CUDA_VISIBLE_DEVICES=0 timeout 420 python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh --phases first,exp,noop > $R/exp.stdout 2>&1; echo "first,exp,noop rc=$?" ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout 200 python3 $TR --out $R/train-cold.json > $R/train-cold.log 2>&1; echo "train cold rc=$?"
  timeout 120 python3 $TR --out $R/train-warm.json > $R/train-warm.log 2>&1; echo "train warm rc=$?" ) &
wait
timeout 120 $DR $TR --out $R/train-2gpu.json > $R/train-2gpu.log 2>&1; echo "train 2gpu rc=$?"
tar czf $OUT/call3.tgz -C $R .
python3 -c "
import json; d=json.load(open('$R/rh/rehearse.json'))
for p in ('first','exp','noop'):
    f=d.get(p,{}); print(p, f.get('wall_s'), f.get('rc'), f.get('ran'), [(s['stage'], s.get('wall_s'), s.get('peak_gpu_mib')) for s in f.get('stages',[])])"
for f in $R/*.json; do echo "== $f"; head -c 900 $f; echo; done
