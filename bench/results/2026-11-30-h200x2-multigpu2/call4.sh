# Call 4 (same machine, right after call 3): training at batch 8 per GPU, 1 GPU then 2 (static graph + bucket views).
source .device/setup.sh > /dev/null 2>&1; R=/tmp/res4; mkdir -p $R
TR="bench/bench_train.py --impl ours --batch-sizes 8 --compile blocks --compile-mode reduce-overhead --steps 10"
CUDA_VISIBLE_DEVICES=0 timeout 125 python3 $TR --out $R/train-1gpu-b8.json > $R/train-1gpu-b8.log 2>&1
timeout 135 python3 -m torch.distributed.run --standalone --nproc_per_node 2 $TR --ddp static_graph,bucket_view --out $R/train-2gpu-static-b8.json > $R/train-2gpu-static-b8.log 2>&1
