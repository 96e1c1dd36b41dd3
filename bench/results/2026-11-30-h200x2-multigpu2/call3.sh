# Call R3 (both GPUs): how the GPUs are linked, the all-reduce of the LoRA gradients, then training on 1 GPU and
# on 2 (DDP: accelerate's defaults, then static graph + bucket views), batch 4 per GPU, in this one call.
source .device/setup.sh > /dev/null 2>&1 || exit 1
R=/tmp/res3; rm -rf $R; mkdir -p $R
nvidia-smi topo -m > $R/topo.txt 2>&1
python3 -c "import torch; print('peer access 0->1:', torch.cuda.can_device_access_peer(0, 1))" >> $R/topo.txt 2>&1
DR="python3 -m torch.distributed.run --standalone --nproc_per_node 2"
NCCL_DEBUG=INFO timeout 60 $DR bench/bench_allreduce.py --out $R/allreduce.json > $R/allreduce.log 2>&1; echo "allreduce rc=$?"
TR="bench/bench_train.py --impl ours --batch-sizes 4 --compile blocks --compile-mode reduce-overhead --steps 10"
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 $TR --out $R/train-1gpu.json > $R/train-1gpu.log 2>&1; echo "train 1gpu rc=$?"
TORCH_LOGS=perf_hints timeout 200 $DR $TR --out $R/train-2gpu.json > $R/train-2gpu.log 2>&1; echo "train 2gpu rc=$?"
timeout 130 $DR $TR --ddp static_graph,bucket_view --out $R/train-2gpu-static.json > $R/train-2gpu-static.log 2>&1; echo "train 2gpu static rc=$?"
tar czf $OUT/multigpu.tgz -C $R .
cat $R/topo.txt; grep -hE "via P2P|via SHM|NET/|Channel 00" $R/allreduce.log | head -6
for f in $R/*.json; do echo "== $f"; python3 -c "
import json,sys; d=json.load(open('$f')); print(d.get('settings',{}).get('ddp'), [{k: r.get(k) for k in ('batch','s_per_step','images_per_s','cudagraph_skips','ms','bus_gb_per_s','megabytes','dtype','lora_rank') if k in r} for r in d.get('results',[])])"; done
grep -h "perf_hints\|skipping cudagraphs\|cudagraph" $R/train-2gpu.log | sort | uniq -c | sort -rn | head -8
