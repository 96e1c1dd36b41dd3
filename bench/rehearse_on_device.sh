#!/usr/bin/env bash
# The rehearsal on the lent GPU, over two device calls (bench/README.md, "The rehearsal on the lent GPU"), from the
# repo root with `carry: [".device"]` (the wheels of rehearsal-wheels.txt and dlib's two model files):
#   bash bench/rehearse_on_device.sh start     # call 1: install, model folders and pictures (--phases setup), then
#                                              # first/exp/noop in a process session of their own, watched until
#                                              # the call's end
#   bash bench/rehearse_on_device.sh collect   # call 2, machine still warm: wait for them; everything into $OUT
# KLEIN_ROOT=/dev/shm puts FLUX.2 klein's 17 GB folder in memory, not on the disk; PROFILE=1 adds py-spy; SMALL=1:
# the CPU check of this script (tiny models).
set -u
R=/tmp/res-rehearsal
RH=(python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh ${KLEIN_ROOT:+--klein-root $KLEIN_ROOT} ${SMALL:+--small})

install() {
  if [ ! -f /tmp/site/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/whl/*.whl \
      || return 1
    mkdir -p /tmp/site/face_recognition_models/models && touch /tmp/site/face_recognition_models/__init__.py
    for f in .device/frm/*.xz; do xz -dc "$f" > "/tmp/site/face_recognition_models/models/$(basename "$f" .xz)"; done
    touch /tmp/site/.done
  fi
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
}

room() { df -h /tmp /dev/shm | tail -2; free -g | head -2 | tail -1; }

summary() {
  python3 - "$R/rh/rehearse.json" <<'P'
import json, sys
d = json.load(open(sys.argv[1]))
for p in ("setup", "first", "exp", "noop"):
    f = d.get(p, {})
    print(p, f.get("wall_s"), f.get("rc"), [(s["stage"], s.get("wall_s"), s.get("peak_gpu_mib")) for s in f.get("stages", [])])
P
  grep -hE "ERROR|Traceback|Error:" $R/rh/*.log | cut -c1-200 | tail -20
}

case ${1:?start or collect} in
start)
  rm -rf $R && mkdir -p $R
  install > $R/install.log 2>&1 || { cat $R/install.log; exit 1; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $R/machine.txt; nproc >> $R/machine.txt
  room | tee -a $R/machine.txt
  timeout 400 "${RH[@]}" --phases setup > $R/setup.log 2>&1 || { tail -30 $R/setup.log; exit 1; }
  echo "setup done at $SECONDS s"; room | tee -a $R/machine.txt
  setsid bash -c "${RH[*]} --phases first,exp,noop ${PROFILE:+--profile} > $R/rehearse.stdout 2>&1; echo \$? > $R/done" \
    < /dev/null > /dev/null 2>&1 &
  while [ ! -f $R/done ] && [ $SECONDS -lt 580 ]; do sleep 5; done
  echo "call 1 ends at $SECONDS s"; summary
  ;;
collect)
  install > /dev/null 2>&1
  while [ ! -f $R/done ] && [ $SECONDS -lt 560 ]; do sleep 5; done
  echo "rehearsal rc=$(cat $R/done 2>/dev/null) at $SECONDS s"
  tar czf "$OUT/rehearsal.tgz" -C $R .
  summary
  ;;
esac
