"""skypilot/experiment.yaml, the SkyPilot task of a sweep across pods: valid for SkyPilot, running the commands that
docs/several-machines.md gives, with the secrets it names.

SkyPilot can't be installed into this project's environment (skypilot 0.14.1 pins click<8.2, while huggingface_hub,
celery and gto need click 8.2 or newer), so the task is validated against SkyPilot 0.14.1's own task schema,
tests/data/skypilot-task-schema.json (its sky.utils.schemas, what its loader validates against), and loaded with
SkyPilot's loader, sky.Task.from_yaml, where SkyPilot is at hand: importable here, or STORYBOARD_SKYPILOT_PYTHON
naming a Python that has it. `python tests/test_sky_task.py` under such a Python rewrites the schema file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "skypilot/experiment.yaml"
SCHEMA = Path(__file__).parent / "data/skypilot-task-schema.json"
DOCS = REPO / "docs/several-machines.md"
SKYPILOT_PYTHON = "STORYBOARD_SKYPILOT_PYTHON"

LOAD = """
import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
json.dump({
    "name": task.name,
    "run": task.run,
    "envs": dict(task.envs),
    "secrets": sorted(task.secrets),
    "secrets_at_launch": sorted(ref.name for ref in task.managed_secret_refs),
    "accelerators": sorted(name for r in task.resources for name in (r.accelerators or {})),
    "spot": all(r.use_spot for r in task.resources),
}, sys.stdout)
"""


def _task() -> dict:
    return yaml.safe_load(TASK.read_text())


def _dvc_lines(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.strip().startswith("dvc ")]


def _section(title: str) -> str:
    (section,) = [s for s in re.split(r"^## ", DOCS.read_text(), flags=re.M) if s.startswith(title)]
    return section


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_the_task_fits_skypilots_schema():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(_task())
    typo = _task()
    typo["resources"]["accelerator"] = typo["resources"].pop("accelerators")
    assert not validator.is_valid(typo)  # the schema is SkyPilot's strict one, not any YAML


def test_skypilots_own_loader_reads_the_task():
    spec = find_spec("sky")
    python = os.environ.get(SKYPILOT_PYTHON) or (sys.executable if spec and spec.origin else None)
    if python is None:
        pytest.skip(f"SkyPilot is not installed here; set {SKYPILOT_PYTHON} to a Python that has it")
    proc = subprocess.run([python, "-c", LOAD, str(TASK)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = json.loads(proc.stdout)
    assert task["name"] == "storyboard-experiment" and task["run"] == _task()["run"]
    assert {"EXP_NAME", "EXP_PARAMS"} <= set(task["envs"])
    # no value in the file: each comes from the launching shell (--secret NAME)
    assert task["secrets_at_launch"] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GIT_TOKEN"]
    assert task["accelerators"] and task["spot"]


def test_the_task_runs_the_commands_the_docs_give():
    task = _task()
    sweep = _section("A sweep across pods")
    assert _dvc_lines(task["run"]) == _dvc_lines(_bash_blocks(sweep)[0])
    assert _dvc_lines(task["run"]) == [
        "dvc pull --allow-missing",
        'dvc exp run --pull --allow-missing ${EXP_NAME:+-n "$EXP_NAME"} "${set_params[@]}"',
        "dvc exp push origin",
    ]
    launch = " ".join(_bash_blocks(sweep)[1].split("\\\n"))
    (command,) = [line for line in launch.splitlines() if "sky jobs launch" in line]
    assert "skypilot/experiment.yaml" in command
    assert set(re.findall(r"--env (\w+)=", command)) <= set(task["envs"])
    needed = {name for name, value in task["secrets"].items() if value is None}
    assert needed == set(re.findall(r"--secret (\w+)", command))
    for name in task["secrets"]:
        assert f"`{name}`" in sweep  # each secret is explained


def test_the_run_passes_each_param_and_pushes_with_the_token(tmp_path):
    """The task's own run script under bash, `dvc` a shell function that prints its arguments: EXP_PARAMS becomes
    one -S per key=value, and git (which dvc exp push uses) answers origin's credential prompt with GIT_TOKEN."""
    script = 'dvc() { printf "<%s>" "$@"; echo; }\n' + _task()["run"]
    env = {
        "PATH": os.environ["PATH"],
        "GIT_TERMINAL_PROMPT": "0",
        "HOME": str(tmp_path),  # the task's `git config --global` goes here
        "EXP_NAME": "rank 32",
        "EXP_PARAMS": "train.rank=32 generate.guidance_scale=4.0",
        "GIT_USERNAME": "x-access-token",
        "GIT_TOKEN": "secret-token",
        "OPENAI_API_KEY": "",
    }
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "<pull><--allow-missing>",
        "<exp><run><--pull><--allow-missing><-n><rank 32><-S><train.rank=32><-S><generate.guidance_scale=4.0>",
        "<exp><push><origin>",
    ]
    fill = subprocess.run(
        ["git", "credential", "fill"],
        input="protocol=https\nhost=github.com\n\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "username=x-access-token" in fill.stdout.splitlines() and "password=secret-token" in fill.stdout


if __name__ == "__main__":  # under a Python with SkyPilot: rewrite the schema file from SkyPilot's own
    import sky
    from sky.utils import schemas

    dumped = schemas.get_task_schema()
    dumped["properties"]["resources"] = schemas.get_resources_schema()  # validated separately by its loader
    note = (
        f"SkyPilot {sky.__version__}'s task YAML schema (Apache-2.0), the one sky.Task.from_yaml validates against: "
        "sky.utils.schemas.get_task_schema() with get_resources_schema() under properties.resources, dumped as JSON. "
        "Regenerate with a SkyPilot install (tests/test_sky_task.py says how)."
    )
    SCHEMA.write_text(json.dumps({"$comment": note, **dumped}, indent=1, sort_keys=True) + "\n")
