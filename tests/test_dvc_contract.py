"""The DVC contract, kept exact as the code grows: each stage reruns when what it reads changes, and only then.

1. Code: every stage's `deps` hold exactly the repo modules its entry module imports (the import closure, lazy
   imports included, resolved in a subprocess from the repo root the way `python -m stages.x` resolves them);
   `make deps` (storyboard/deps.py) writes them, and leaves the committed dvc.yaml as it is.
2. Params: `EXPECTED` says, for every leaf key of params.yaml, which stages `dvc status` must report changed when
   that key alone changes, in a repo whose lock is up to date. A key missing from the table fails the test: a new
   knob needs a decision about what it reruns. Stages downstream rerun through their data deps (a new LoRA reruns
   generate@lora), which `dvc status` reports only once the upstream stage has run; the table lists the stages whose
   own params changed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from storyboard.deps import entry_modules

REPO = Path(__file__).resolve().parents[1]
MODES = ("generate@baseline", "generate@lora", "generate@ref_guided", "generate@multiref")
GENERATE = set(MODES)
MODELS = {"train", "select", *GENERATE, "evaluate"}  # every stage that loads a model of the active profile
SCORED = {"select", "evaluate"}  # select scores the saved steps with evaluate's locator and identity figure


def _table(*rows: tuple) -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for stages, *keys in rows:
        for key in keys:
            assert key not in table, f"{key} is in the table twice"
            table[key] = set(stages)
    return table


EXPECTED = _table(
    (MODELS, "profile", "runtime.device", "runtime.dtype", "models.tiny.root", "models.tiny.seed"),
    # train: the kohya file's metadata names the character (title, description, trigger); select and evaluate
    # locate it with the detector prompt, which may name it
    ({"sample", "caption", "train", "plan", *GENERATE, *SCORED}, "character.name"),
    # train: the kohya file's metadata names the trigger (the captions carry it too, so caption reruns anyway)
    ({"sample", "caption", "train", *GENERATE, "evaluate"}, "character.trigger"),
    ({"caption", "train", "plan", *GENERATE, *SCORED}, "character.description"),
    ({"plan", *GENERATE, "evaluate"}, "stories"),
    ({"train", *GENERATE}, "models.sdxl.base", "models.sdxl.vae"),
    ({*GENERATE, *SCORED}, "models.sdxl.clip"),
    (GENERATE, "models.sdxl.likeness"),
    (
        GENERATE,
        "models.sdxl.lightning_lora",
        "models.sdxl.lightning_lora_weight",
        "models.sdxl.hyper_sd_lora",
        "models.sdxl.hyper_sd_lora_weight",
    ),
    # select's and evaluate's, but ref_guided lists every model (one DVC slot); its stories' input hash leaves the
    # detector out, so that rerun renders nothing
    ({"generate@ref_guided", *SCORED}, "models.sdxl.detector"),
    (
        {"generate@ref_guided"},
        "models.sdxl.ip_adapter",
        "models.sdxl.ip_adapter_subfolder",
        "models.sdxl.ip_adapter_weight",
        "models.sdxl.ip_adapter_image_encoder",
        "models.sdxl.faceid_adapter",
        "models.sdxl.faceid_adapter_subfolder",
        "models.sdxl.faceid_adapter_weight",
        "models.sdxl.controlnet",
    ),
    # multiref's own model; ref_guided lists every model (one DVC slot) and its stories' hash leaves it out
    ({"generate@ref_guided", "generate@multiref"}, "models.sdxl.multiref"),
    # multiref: its reference rule picks the clearest face with the profile's face backend
    (
        {"generate@ref_guided", "generate@multiref", *SCORED},
        "models.sdxl.face_backend",
        "models.sdxl.face_model",
        "models.sdxl.face_model_root",
        "models.tiny.face_backend",
    ),
    ({"sample"}, "sample.count", "sample.size", "sample.seed"),
    (
        {"caption"},
        "caption.input_dir",
        "caption.backend",
        "caption.template",
        "caption.prompt",
        "caption.refusal_prompt",
        "caption.openai.model",
        "caption.openai.base_url",
        "caption.openai.api_key_env",
        "caption.openai.temperature",
        "caption.openai.max_tokens",
        "caption.openai.timeout_s",
        "caption.openai.max_retries",
        "caption.concurrency",
        "caption.cache_dir",
        "caption.retry_refused",
        "caption.cost_per_1k_tokens_in",
        "caption.cost_per_1k_tokens_out",
        "caption.min_side",
        "caption.max_side",
        "caption.background",
    ),
    (
        {"train"},
        "train.rank",
        "train.alpha",
        "train.dropout",
        "train.target_modules",
        "train.text_encoder_lora",
        "train.text_encoder_learning_rate",
        "train.text_encoder_target_modules",
        "train.learning_rate",
        "train.lr_scheduler",
        "train.lr_warmup_steps",
        "train.max_steps",
        "train.epochs",
        "train.batch_size",
        "train.gradient_accumulation_steps",
        "train.optimizer",
        "train.adam_weight_decay",
        "train.max_grad_norm",
        "train.snr_gamma",
        "train.noise_offset",
        "train.caption_dropout",
        "train.checkpoint_every",
        "train.checkpoints_keep",
        "train.resolution",
        "train.bucketing",
        "train.center_crop",
        "train.random_flip",
        "train.seed",
        "train.mixed_precision",
        "train.gradient_checkpointing",
        "train.compile",
        "train.compile_mode",
        "train.log_every",
        "train.validation.every",
        "train.validation.prompts",
        "train.validation.steps",
        "train.validation.seed",
    ),
    ({"select"}, "select.step", "select.tolerance"),
    (
        {"plan"},
        "plan.backend",
        "plan.structured_output",
        "plan.min_frames",
        "plan.max_frames",
        "plan.scene_tokens",
        "plan.openai.model",
        "plan.openai.base_url",
        "plan.openai.api_key_env",
        "plan.openai.temperature",
        "plan.openai.max_tokens",
        "plan.openai.timeout_s",
        "plan.openai.max_retries",
    ),
    (
        GENERATE,
        "generate.steps",
        "generate.guidance_scale",
        "generate.resolution",
        "generate.seed",
        "generate.style",
        "generate.negative_prompt",
        "generate.clip_threshold",
        "generate.likeness_threshold",
        "generate.calibration.clip_percentile",
        "generate.calibration.likeness_percentile",
        "generate.calibration.min_images",
        "generate.calibration.clip_fallback",
        "generate.calibration.likeness_fallback",
        "generate.max_retries",
        "generate.sampler",
        "generate.frames_per_batch",
        "generate.contact_sheet_columns",
        "generate.gif_frame_ms",
        "generate.vae_tiling",
        "generate.vae_slicing",
        "generate.cpu_offload",
        "generate.compile",
        "generate.compile_mode",
        "generate.quantize",
        "generate.attention",
        "generate.channels_last",
        "generate.fuse_qkv",
    ),
    ({"generate@lora", "generate@ref_guided"}, "generate.lora_scale"),
    (
        {"generate@multiref"},
        "generate.multiref.steps",
        "generate.multiref.guidance_scale",
        "generate.multiref.references",
        "generate.multiref.reference_size",
        "generate.multiref.first_frame",
        "generate.multiref.max_sequence_length",
    ),
    (
        {"generate@ref_guided"},
        "generate.ip_adapter_scale",
        "generate.controlnet_scale",
        "generate.face_min_score",
    ),
    # select and evaluate pick their face backend apart from the one FaceID conditions on
    ({"generate@ref_guided", *SCORED}, "generate.reference"),
    (SCORED, "evaluate.face_min_score", "evaluate.face_backend", "evaluate.detector_prompt"),
)


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves (lists count as one leaf: DVC tracks a list as one value)."""
    keys = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys += _leaf_keys(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return keys


def _python_files(dep: str) -> set[str]:
    """A dep's Python files: the file itself, or every .py under a folder (as DVC hashes the folder)."""
    path = REPO / dep
    if path.is_dir():
        return {p.relative_to(REPO).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
    return {dep} if dep.endswith(".py") else set()


@pytest.fixture(scope="module")
def stages() -> dict:
    """Every stage as DVC sees it (foreach expanded), by name."""
    with Repo(str(REPO)) as repo:
        return {
            stage.addressing: {
                "cmd": stage.cmd,
                "deps": [dep.def_path for dep in stage.deps if not hasattr(dep, "params")],
                "params": sorted(k for dep in stage.deps if hasattr(dep, "params") for k in dep.params),
            }
            for stage in repo.index.stages
        }


def test_code_deps_are_each_stages_import_closure(stages):
    entries = {name: entry_modules(stage["cmd"]) for name, stage in stages.items()}
    script = (
        "import json, sys; from storyboard.closure import import_closure; "
        "print(json.dumps({m: [p.as_posix() for p in import_closure(m)] for m in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *sorted({m for modules in entries.values() for m in modules})],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    closures = json.loads(out)
    problems = []
    for name, stage in sorted(stages.items()):
        listed = set().union(*(_python_files(d) for d in stage["deps"]))
        imported = set().union(*(closures[m] for m in entries[name]))
        problems += [f"{name}: imports {f}, which dvc.yaml does not list" for f in sorted(imported - listed)]
        problems += [f"{name}: lists {f}, which its code never imports" for f in sorted(listed - imported)]
    assert not problems, "\n".join([*problems, "run `make deps`: it writes each stage's code deps from its imports"])


def _make_deps(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`make deps` in `root` (its own code, resolved from there), with this Python on the PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    return subprocess.run(
        ["make", "-s", "-o", "install", "deps", *args], cwd=root, env=env, capture_output=True, text=True
    )


def test_make_deps_leaves_the_committed_dvc_yaml_as_it_is():
    """The code deps are the fixer's, layout included (whole package folders as one entry)."""
    proc = _make_deps(REPO, "DEPS_FLAGS=--check")
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nrun `make deps` and commit dvc.yaml"


def test_make_deps_restores_a_removed_dep(tmp_path):
    root = tmp_path / "repo"
    for name in ("stages", "storyboard"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "params.yaml", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    committed = (REPO / "dvc.yaml").read_text()
    lines = committed.splitlines(keepends=True)
    # train's whole package folder and one of generate's files (in the foreach template) gone by hand
    removed = [i for i, line in enumerate(lines) if line.strip() in ("- storyboard/train", "- storyboard/generate")]
    assert len(removed) == 2, removed
    (root / "dvc.yaml").write_text("".join(line for i, line in enumerate(lines) if i not in removed))

    proc = _make_deps(root)
    assert proc.returncode == 0, proc.stderr
    assert "train: + storyboard/train" in proc.stdout and "generate: + storyboard/generate" in proc.stdout
    assert (root / "dvc.yaml").read_text() == committed  # the same file, comments and layout included
    assert _make_deps(root, "DEPS_FLAGS=--check").returncode == 0


def test_every_params_key_is_in_the_table():
    keys = _leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    missing = [k for k in keys if k not in EXPECTED]
    gone = [k for k in EXPECTED if k not in keys]
    assert not missing, f"params.yaml keys with no row in EXPECTED (decide which stages they rerun): {missing}"
    assert not gone, f"rows in EXPECTED for keys params.yaml no longer has: {gone}"


def _changed(value):
    """Another value of the same kind, so that DVC sees the key change."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, value[-1] if value else "x"]
    if value is None:
        return "changed"
    return f"{value}-changed"


def _set(data: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value


@pytest.fixture(scope="module")
def locked_repo(tmp_path_factory, stages) -> Path:
    """A repo with this dvc.yaml and params.yaml whose lock is up to date: every dep and out a small placeholder."""
    root = tmp_path_factory.mktemp("contract")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for name in ("dvc.yaml", "params.yaml"):
        (root / name).write_bytes((REPO / name).read_bytes())
    with Repo.init(str(root)) as repo, repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["site_cache_dir"] = str(root / ".dvc" / "site")
    for stage in stages.values():
        for dep in stage["deps"]:
            path = root / dep
            if (REPO / dep).is_file() or dep.endswith(".py"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dep)
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text(dep)
    with contextlib.chdir(root), Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                if not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text(str(out))
        repo.commit(force=True)
        assert repo.status() == {}, repo.status()
    return root


def _reported(root: Path) -> set[str]:
    with contextlib.chdir(root), Repo(str(root)) as repo:
        return set(repo.status())


def test_each_params_key_reruns_exactly_its_stages(locked_repo):
    params_file = locked_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    wrong = []
    try:
        for key in _leaf_keys(params):
            changed = copy.deepcopy(params)
            value = changed
            for part in key.split("."):
                value = value[part]
            _set(changed, key, _changed(value))
            params_file.write_text(yaml.safe_dump(changed, sort_keys=False))
            reported = _reported(locked_repo)
            if reported != EXPECTED.get(key, set()):
                expected = sorted(EXPECTED.get(key, set()))
                wrong.append(f"{key}: dvc status reports {sorted(reported)}, the table says {expected}")
    finally:
        params_file.write_text(original)
    assert not wrong, "\n".join(wrong)


def _docs_table() -> dict[str, set[str]]:
    """The "What reruns" table of docs/pipeline-and-params.md, expanded to leaf keys: `x.*` is every key under x,
    "every other" the keys under the prefix that no other row names."""
    text = (REPO / "docs" / "pipeline-and-params.md").read_text()
    section = text.split("## What reruns, and what is kept", 1)[1].split("\n\n", 3)[2]
    rows = [
        line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `") or "every other" in line
    ]
    keys = _leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    table: dict[str, set[str]] = {}
    others = []
    for cells, stages in ((c[0], {s.strip() for s in c[1].split(",")}) for c in rows):
        names = re.findall(r"`([^`]+)`", cells)
        if "every other" in cells:
            others.append((names[0].removesuffix(".*"), stages))
            continue
        for name in names:
            matched = [k for k in keys if k.startswith(name.removesuffix("*"))] if name.endswith(".*") else [name]
            table.update((k, stages) for k in matched)
    for prefix, stages in others:
        table.update((k, stages) for k in keys if k.startswith(f"{prefix}.") and k not in table)
    return table


def test_docs_say_what_the_table_says():
    """docs/pipeline-and-params.md's claims about what reruns are these tests' claims, key for key."""
    docs = _docs_table()
    differ = {k: (sorted(docs.get(k, set())), sorted(v)) for k, v in EXPECTED.items() if docs.get(k) != v}
    assert not differ, "\n".join(
        f"{k}: docs/pipeline-and-params.md says {r}, the table {e}" for k, (r, e) in differ.items()
    )
