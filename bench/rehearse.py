"""Rehearse a user's first run on a GPU pod: the real `dvc repro` at full size, every stage, timed.

What a user does, in a fresh repo copy under --workdir, with nothing from the hub: the model folders come from
bench/hub_folders.py (full-size random weights in each hub repo's layout), and params.yaml differs from the
shipped one only where a user without InsightFace's pack and without an OpenAI key would change it:

    models.sdxl.*           the hub-layout folders (instead of hub ids)
    models.sdxl.face_backend: dlib          (InsightFace's pack cannot be had offline)
    caption.backend: sidecar, plan.backend: offline, caption.input_dir: data/raw

Phases (--phases, in order; each reuses the workdir the last left):
    setup   copy the project into --workdir, git init, write the model folders, draw 20 pictures at 1024 px with
            .txt sidecars into data/raw, edit params.yaml, commit; where this Python's packages come without
            bytecode, compile it once into <models>/pycache (pip writes it at install; see bytecode_prefix)
    first   `dvc repro`                                       (every stage, shipped defaults: 500 training steps)
    exp     `dvc exp run -S generate.ip_adapter_scale=0.7`     (should rerun generate@ref_guided and evaluate only)
    noop    `dvc repro`                                       (should rerun nothing)

Per phase the JSON holds the wall seconds of the dvc command, and per stage that ran: wall seconds (from dvc's
"Running stage" line to the next one, or to the end: dvc's hashing and caching of the outputs included) and the
peak of `nvidia-smi --query-gpu=memory.used` sampled every 250 ms while it ran (the stage process's CUDA context
and caching allocator included: what the card must hold, not `max_memory_allocated`). Stages dvc skipped are
listed. The dvc output of each phase goes to <out>/<phase>.log.

    python bench/rehearse.py --workdir /tmp/rehearse --models /tmp/hub --out $OUT            # on the GPU
    python bench/rehearse.py --workdir /tmp/rh --models /tmp/hubsmall --out /tmp/o --small   # CPU check
Prints one JSON line (also written to <out>/rehearse.json after each phase). --profile also samples each phase with
py-spy (wall time per Python stack, in each stage's process): where a stage's start-up goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# What a clone of the repo holds that the pipeline reads (tests, bench and docs play no part in a run).
PROJECT_FILES = (
    "storyboard",
    "stages",
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "pyproject.toml",
    "Makefile",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "data/.gitignore",
    "data/references",  # generate@multiref's dep: a clone has it (its README), the user's reference sheet goes there
)
RAW_IMAGES = 20
PHASES = ("setup", "first", "exp", "noop")
EXP_ARGS = ("-S", "generate.ip_adapter_scale=0.7")
PROFILE_RATE = 20  # py-spy samples per second per process
RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "rehearsal",
    "GIT_AUTHOR_EMAIL": "rehearsal@storyboard.invalid",
    "GIT_COMMITTER_NAME": "rehearsal",
    "GIT_COMMITTER_EMAIL": "rehearsal@storyboard.invalid",
}


class GpuMemory:
    """`nvidia-smi` memory.used samples (MiB) in a background thread; `peak()` since the last `reset()`."""

    def __init__(self) -> None:
        self._peak = 0
        self._lock = threading.Lock()
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "250"],
                stdout=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                value = int(line.strip().split()[0])
            except (ValueError, IndexError):
                continue
            with self._lock:
                self._peak = max(self._peak, value)

    def reset(self) -> int | None:
        """The peak since the last reset (None without nvidia-smi), and start a new window."""
        with self._lock:
            peak, self._peak = self._peak, 0
        return peak if self.proc else None

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None = None) -> str:
    """Run a command, fail loudly with its output; return its stdout."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = result.stdout + result.stderr
    if log:
        log.write_text(out)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{out[-4000:]}")
    return result.stdout


def timed_dvc(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    gpu: GpuMemory,
    on_stage=lambda done: None,
    profile: Path | None = None,
) -> dict:
    """Run `dvc <args>`, streaming its output to `log`; time each stage it runs, and its GPU memory peak.

    `on_stage(stages)` is called as each stage ends, so a run killed at a time limit keeps the finished ones.
    `profile`: py-spy samples dvc and every stage process into this file (wall time, idle included), without
    pausing them."""
    start = time.perf_counter()
    stages: list[dict] = []
    skipped: list[str] = []
    gpu.reset()

    def close_stage(now: float) -> None:
        if stages and "wall_s" not in stages[-1]:
            stages[-1]["wall_s"] = round(now - stages[-1].pop("_t"), 1)
            stages[-1]["peak_gpu_mib"] = gpu.reset()
            on_stage([s for s in stages if "wall_s" in s])

    cmd = [sys.executable, "-m", "dvc", *args]
    if profile is not None:
        spy = ["py-spy", "record", "--subprocesses", "--idle", "--nonblocking", "--rate", str(PROFILE_RATE)]
        cmd = [*spy, "--format", "raw", "--output", str(profile), "--", *cmd]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    with log.open("w") as f:
        for line in proc.stdout:
            now = time.perf_counter()
            f.write(f"[{now - start:7.1f}] {line}")
            f.flush()
            if m := RUNNING.search(line):
                close_stage(now)
                gpu.reset()
                stages.append({"stage": m.group(1), "_t": now})
            elif m := SKIPPED.search(line):
                skipped.append(m.group(1))
    rc = proc.wait()
    end = time.perf_counter()
    close_stage(end)
    return {
        "command": "dvc " + " ".join(args),
        "rc": rc,
        "wall_s": round(end - start, 1),
        "ran": [s["stage"] for s in stages],
        "skipped": skipped,
        "stages": stages,
    }


def overrides(models: dict[str, str], small: bool) -> dict[str, object]:
    """The params a user without the hub, InsightFace's pack or an OpenAI key sets; --small adds CPU sizes."""
    values: dict[str, object] = {k: v for k, v in models.items() if k.startswith("models.sdxl.")}
    values.update(
        {
            "models.sdxl.face_backend": "dlib",
            "caption.backend": "sidecar",
            "caption.input_dir": "data/raw",
            "plan.backend": "offline",
        }
    )
    if small:  # plumbing only: a CPU cannot run 500 steps of even the small UNet in a check
        values.update(
            {
                "train.max_steps": 4,
                "train.compile": "none",
                "train.checkpoint_every": 2,
                "train.validation.every": 2,
                "train.validation.steps": 2,
                "generate.steps": 2,
                "generate.max_retries": 0,
            }
        )
    return values


def set_params(path: Path, values: dict[str, object]) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        if last not in node:
            raise SystemExit(f"params.yaml has no key {dotted}")
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def bytecode_prefix(models_root: Path) -> Path | None:
    """Where the stage processes should find this Python's bytecode; None: beside the sources, where it is.

    pip writes a package's bytecode when it installs it, so on a pod the stages import compiled modules. An image
    whose packages come without it and cannot take it (the lent GPU's) makes every stage process compile its
    imports again: at least 46 s of a first run (BENCHMARKS.md, third rehearsal). There the rehearsal compiles them
    once, before the timed phases, into a folder of its own (PYTHONPYCACHEPREFIX), as pip would have."""
    torch_init = importlib.util.find_spec("torch").origin
    if Path(importlib.util.cache_from_source(torch_init)).exists():
        return None
    return models_root / "pycache"


def compile_bytecode(prefix: Path, env: dict[str, str]) -> float:
    """Compile the standard library's and every installed package's sources into `prefix`; returns the seconds it
    took. The standard library too: under PYTHONPYCACHEPREFIX Python reads bytecode from the prefix alone."""
    t = time.perf_counter()
    paths = sysconfig.get_paths()
    libraries = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    folders = dict.fromkeys([*libraries, *env.get("PYTHONPATH", "").split(os.pathsep)])
    folders = [f for f in folders if f and Path(f).is_dir()]
    # Some packages ship files that are not Python 3 (templates, test data): compileall reports them and goes on.
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "0", *folders]
    subprocess.run(cmd, env={**env, "PYTHONPYCACHEPREFIX": str(prefix)}, capture_output=True, check=False)
    return round(time.perf_counter() - t, 1)


def setup(
    work: Path, models_root: Path, small: bool, env: dict[str, str], out: Path, klein_root: Path | None = None
) -> dict:
    t0 = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in PROJECT_FILES:
        src, dst = REPO / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    run(["git", "init", "-q"], work, env)

    t = time.perf_counter()
    device = "cpu" if small else "cuda"
    cmd = [sys.executable, str(REPO / "bench" / "hub_folders.py"), "--root", str(models_root), "--device", device]
    # The bench scripts import the package from this checkout, installed or not.
    hub_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))}
    cmd += ["--small"] if small else []
    cmd += ["--klein-root", str(klein_root)] if klein_root else []
    hub = run(cmd, REPO, hub_env, out / "hub.log")
    models = json.loads(hub.strip().splitlines()[-1])
    folders_s = time.perf_counter() - t

    size = 256 if small else 1024
    draw = (
        "from pathlib import Path; from storyboard.settings import load_settings; "
        "from storyboard.sample_data import draw_sample_set; "
        f"draw_sample_set(Path('data/raw'), load_settings('params.yaml').character, count={RAW_IMAGES}, "
        f"size={size}, seed=0)"
    )
    run([sys.executable, "-c", draw], work, env)
    values = overrides(models, small)
    set_params(work / "params.yaml", values)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "rehearsal: my pictures, my params"], work, env)
    prefix = env.get("PYTHONPYCACHEPREFIX")
    bytecode_s = compile_bytecode(Path(prefix), env) if prefix else None
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "bytecode": {"prefix": prefix, "compile_s": bytecode_s},
        "model_folders_s": round(folders_s, 1),
        "raw_images": RAW_IMAGES,
        "raw_size": size,
        "params_overrides": values,
    }


def stage_summaries(work: Path) -> dict:
    """What the run's outputs say about themselves: metrics and each mode's render metadata, if present."""
    summary: dict = {}
    for path in sorted((work / "metrics").glob("*.json")):
        summary[f"metrics/{path.name}"] = json.loads(path.read_text())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the user's repo copy (replaced by the setup phase)")
    parser.add_argument("--models", required=True, help="where bench/hub_folders.py writes (kept across calls)")
    parser.add_argument("--out", required=True, help="folder for rehearse.json and the dvc logs")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    parser.add_argument("--small", action="store_true", help="small models, few steps: the CPU check")
    parser.add_argument("--profile", action="store_true", help="py-spy samples each dvc phase: <out>/<phase>.pyspy")
    parser.add_argument("--klein-root", type=Path, help="FLUX.2 klein's folder (17 GB) elsewhere, e.g. /dev/shm")
    args = parser.parse_args()
    work, out = Path(args.workdir).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on the PATH (pip install py-spy)")
    phases = [p for p in args.phases.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}")
    # Stage commands call `python`: this interpreter's, as the Makefile puts .venv/bin first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **GIT_ENV, "PATH": path, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    if (prefix := bytecode_prefix(Path(args.models).resolve())) is not None:
        env["PYTHONPYCACHEPREFIX"] = str(prefix)
    result_file = out / "rehearse.json"
    result: dict = json.loads(result_file.read_text()) if result_file.exists() else {}
    result.update({"small": args.small, "complete": False})
    gpu = GpuMemory()
    try:
        import torch

        result.setdefault("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
        result.setdefault("torch", torch.__version__)
        for phase in phases:
            if phase == "setup":
                result["setup"] = setup(work, Path(args.models).resolve(), args.small, env, out, args.klein_root)
            else:
                dvc_args = {"first": ["repro"], "exp": ["exp", "run", *EXP_ARGS], "noop": ["repro"]}[phase]

                def partial(done: list[dict], phase: str = phase, dvc_args: list[str] = dvc_args) -> None:
                    result[phase] = {"command": "dvc " + " ".join(dvc_args), "complete": False, "stages": done}
                    result_file.write_text(json.dumps(result, indent=1) + "\n")

                profile = out / f"{phase}.pyspy" if args.profile else None
                result[phase] = timed_dvc(dvc_args, work, env, out / f"{phase}.log", gpu, partial, profile)
                if phase != "noop":
                    result[f"{phase}_outputs"] = stage_summaries(work)
            result_file.write_text(json.dumps(result, indent=1) + "\n")
            if result.get(phase, {}).get("rc"):
                break
        result["complete"] = all(result.get(p, {}).get("rc", 0) == 0 for p in phases)
    finally:
        gpu.close()
        result_file.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_outputs")}))


if __name__ == "__main__":
    main()
