"""Where each stage's wall time went, from a `bench/rehearse.py --profile` file (py-spy's raw format, --idle).

Per process (dvc and each stage): the seconds of its main thread, then its frames by cumulative seconds; threads
other than the main one (tqdm's monitor, dlib's workers, the story writer) are left out, so the seconds add up to
wall time. A command line run by several processes (inductor's compile workers) is one row, its seconds summed and
its processes counted. `--frames` narrows the frames to those matching a regex; `--bytecode` adds, per process, the
seconds Python spent compiling sources to bytecode (none where the packages were installed with their .pyc files).

    python bench/pyspy_summary.py first.pyspy --stage "mode baseline" --frames "storyboard/|stages/"
    python bench/pyspy_summary.py first.pyspy.xz --bytecode
"""

from __future__ import annotations

import argparse
import lzma
import re
from collections import Counter, defaultdict
from pathlib import Path

COMPILE = "SourceLoader.source_to_code"


def read(path: Path):
    """(process, pid, frames, samples) per line; the process is the innermost `process PID:"cmdline"` frame."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            at = max(i for i, frame in enumerate(frames) if frame.startswith("process "))
            pid, cmdline = frames[at].removeprefix("process ").split(":", 1)
            yield cmdline.strip('"') or "dvc", pid, frames[at + 1 :], int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=float, default=20, help="samples per second (rehearse.py's PROFILE_RATE)")
    parser.add_argument("--stage", help="regex: list the frames of the processes whose command line matches")
    parser.add_argument("--frames", default=".", help="regex: only frames matching it")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--bytecode", action="store_true", help="seconds compiling sources, per process")
    args = parser.parse_args()

    seconds: Counter = Counter()
    compiling: Counter = Counter()
    frames_of: dict[str, Counter] = defaultdict(Counter)
    pids: dict[str, set] = defaultdict(set)
    for process, pid, frames, count in read(args.profile):
        pids[process].add(pid)
        if not frames or frames[0].startswith(("Thread._bootstrap", "_bootstrap")):
            continue  # not the main thread
        seconds[process] += count
        if any(f.startswith(COMPILE) for f in frames):
            compiling[process] += count
        for frame in dict.fromkeys(re.sub(r":\d+\)", ")", f) for f in frames):  # each frame once per stack
            frames_of[process][frame] += count
    for process, n in seconds.most_common():
        extra = f"  (compiling bytecode {compiling[process] / args.rate:.1f} s)" if args.bytecode else ""
        several = f"  ({len(pids[process])} processes)" if len(pids[process]) > 1 else ""
        print(f"{n / args.rate:8.1f} s  {process[:110]}{several}{extra}")
        if args.stage and re.search(args.stage, process):
            shown = [(f, m) for f, m in frames_of[process].most_common() if re.search(args.frames, f)]
            for frame, m in shown[: args.top]:
                print(f"          {m / args.rate:7.1f}  {frame[:140]}")
    if args.bytecode:
        print(f"{sum(compiling.values()) / args.rate:8.1f} s  compiling bytecode, all processes")


if __name__ == "__main__":
    main()
