# Lent-GPU setup: wheels to /tmp/site, dlib's two model files, git if the image has none. Source it from the repo root.
D=.device
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $D/whl/*.whl || return 1
  mkdir -p /tmp/site/face_recognition_models/models /tmp/bin
  touch /tmp/site/face_recognition_models/__init__.py
  python3 - <<'P'
import lzma, pathlib
for f in pathlib.Path(".device/frm").glob("*.xz"):
    pathlib.Path("/tmp/site/face_recognition_models/models", f.stem).write_bytes(lzma.decompress(f.read_bytes()))
if not __import__("shutil").which("git"):
    pathlib.Path("/tmp/bin/git").write_bytes(lzma.decompress(pathlib.Path(".device/git.xz").read_bytes()))
    pathlib.Path("/tmp/bin/git").chmod(0o755)
    print("carried git")
P
  touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
git --version; python3 -c "import torch,diffusers,transformers,dvc,dlib,peft,compel;print(torch.__version__,diffusers.__version__,transformers.__version__,peft.__version__,compel.__version__ if hasattr(compel,'__version__') else '')"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader; df -h /tmp | tail -1; nproc
