# Call 1 (nvidia-h200-x2): install, the rehearsal's setup, then the first `dvc repro`, the ip_adapter_scale
# experiment and the no-op repro on GPU 0 alone, sampled by py-spy, in a process session of its own that outlives
# this call (call 2 waits for it).
source .device/setup.sh > /tmp/setup.out 2>&1 || { cat /tmp/setup.out; exit 1; }
R=/tmp/res; rm -rf $R; mkdir -p $R; cp /tmp/setup.out $R/
export CUDA_VISIBLE_DEVICES=0
which py-spy || exit 1
timeout 400 python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh --phases setup > $R/setup.log 2>&1 || { tail -30 $R/setup.log; exit 1; }
echo "setup done at $SECONDS s"
setsid bash -c "python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh --phases first,exp,noop --profile > $R/rehearse.stdout 2>&1; echo \$? > $R/done" < /dev/null > /dev/null 2>&1 &
while [ ! -f $R/done ] && [ $SECONDS -lt 585 ]; do sleep 5; done
echo "call 1 ends at $SECONDS s"
grep -hE "Running stage|models ready|loaded in|ready in|ERROR|Traceback|frames in" $R/rh/first.log | cut -c1-160 | tail -40
