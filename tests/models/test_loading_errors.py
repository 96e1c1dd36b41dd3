"""The loading errors a user meets, each with its own message and fix, through the real huggingface_hub client.

Local folders (a tiny model with a file removed, a folder that does not exist) load in this process. The hub cases
run storyboard's loaders in a subprocess (tests/models/load_cases.py): huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE at import, so each environment gets a process of its own: a local hub server answering with the
hub's own status codes and X-Error-Code headers (tests/hub_server.py), HF_HUB_OFFLINE=1, an endpoint on a closed
port and one that accepts connections but never answers. Each subprocess runs all its cases once; the tests then
read their case.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hub_server import DISABLED, GATED, GATED_FORBIDDEN, NO_SUCH_FILE, PRIVATE, HubServer
from packaging.requirements import Requirement
from safetensors.torch import load_file, save_file

from storyboard.models import bpe
from storyboard.models.checks import IncompleteModel, check_tokenizer
from storyboard.models.clip import ClipScorer
from storyboard.models.detector import CharacterDetector
from storyboard.models.loading import (
    ModelLoadError,
    attach_ip_adapter,
    load_multiref_pipeline,
    load_pipeline,
    with_controlnet,
)
from storyboard.models.versions import FLOORS, outdated, version_problems
from storyboard.train.parts import SdxlParts

REPO = Path(__file__).resolve().parents[2]
CASES_SCRIPT = Path(__file__).with_name("load_cases.py")
ORG = "storyboard-test"


# --- versions -------------------------------------------------------------------------------------------------


def test_an_old_diffusers_is_named_with_the_pip_command():
    message = outdated("diffusers", "0.39.0")
    assert message.startswith("diffusers 0.39.0 is older than storyboard needs (>= 0.40")
    assert "pip install -U 'diffusers>=0.40'" in message


@pytest.mark.parametrize("installed", ["0.40.0", "0.42.1", "0.43.0.dev0", "1.0"])
def test_diffusers_at_or_past_the_floor_passes(installed):
    assert outdated("diffusers", installed) is None


def test_a_missing_or_unreadable_version_is_named():
    assert "peft is not installed" in outdated("peft", None)
    assert "cannot read ('x.y'" in outdated("transformers", "x.y")


def test_the_installed_libraries_meet_the_floors():
    assert version_problems() == []


def test_pyproject_declares_the_floors_the_code_checks():
    """One floor, two places: what pip installs and what the code checks must not drift apart."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for line in declared:
        req = Requirement(line)
        floors[req.name] = [s.version for s in req.specifier if s.operator == ">="]
    for package, (floor, _) in FLOORS.items():
        assert floors.get(package) == [floor], f"pyproject.toml: {package}>={floor} expected, got {floors.get(package)}"


# --- local folders --------------------------------------------------------------------------------------------


def _copy(tiny_models, tmp_path: Path, part: str, keep_build: bool) -> Path:
    """A copy of one tiny model folder; with keep_build, inside a copy of the tiny build's marker (BUILT.json)."""
    build = Path(tiny_models.base).parent
    root = tmp_path / "build" if keep_build else tmp_path
    shutil.copytree(build / part, root / part)
    if keep_build:
        shutil.copy(build / "BUILT.json", root / "BUILT.json")
    return root / part


def test_a_local_base_model_missing_its_unet_weights_names_the_file_and_the_layout(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "sdxl", keep_build=False)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(tiny_models.model_copy(update={"base": str(folder)}), cpu)
    message = str(info.value)
    assert f"models.sdxl.base = {folder}" in message
    assert f"{folder}/unet/diffusion_pytorch_model" in message and "is missing" in message
    assert "model_index.json and the folders unet/" in message  # the expected layout
    assert f"--local-dir {folder}" in message and "or point models.sdxl.base at a complete folder" in message
    assert "\n" not in message


def test_a_tiny_build_missing_a_file_says_delete_it_to_rebuild(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "controlnet", keep_build=True)
    (folder / "config.json").unlink()
    pipe = load_pipeline(tiny_models, cpu)
    with pytest.raises(ModelLoadError) as info:
        with_controlnet(pipe, tiny_models.model_copy(update={"controlnet": str(folder)}), cpu)
    message = str(info.value)
    assert "models.sdxl.controlnet" in message and f"{folder}/config.json is missing" in message
    assert f"delete {folder.parent} and rerun: the tiny models are rebuilt" in message


def test_an_ip_adapter_folder_without_its_weight_file(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "ip_adapter", keep_build=False)
    (folder / tiny_models.ip_adapter_weight).unlink()
    pipe = load_pipeline(tiny_models, cpu)
    with pytest.raises(ModelLoadError) as info:
        attach_ip_adapter(pipe, tiny_models.model_copy(update={"ip_adapter": str(folder)}), 0.5)
    message = str(info.value)
    assert "IP-Adapter (models.sdxl.ip_adapter" in message
    assert f"{folder}/{tiny_models.ip_adapter_weight} is missing" in message
    assert "models.sdxl.ip_adapter_subfolder, ip_adapter_weight" in message and "image_encoder/" in message


def test_a_clip_folder_without_weights(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "clip", keep_build=False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as info:
        ClipScorer(str(folder), cpu)
    message = str(info.value)
    assert f"CLIP scoring model (models.sdxl.clip = {folder})" in message
    assert "model.safetensors" in message and "is missing" in message


def test_a_folder_that_does_not_exist_is_not_sent_to_the_hub(tiny_models, cpu, tmp_path):
    missing = tmp_path / "nowhere" / "sdxl"
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(tiny_models.model_copy(update={"base": str(missing)}), cpu)
    message = str(info.value)
    assert f"there is no folder {missing}" in message and "set models.sdxl.base to a hub id or to a folder" in message


# --- loaded, but not what the folder should give (storyboard/models/checks.py) -----------------------------------


def _without_tokenizer_files(folder: Path) -> None:
    """Only tokenizer_config.json left: what transformers 5 loads as a tokenizer of 2 tokens, without an error."""
    for file in folder.iterdir():
        if file.name != "tokenizer_config.json":
            file.unlink()


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, "a stage prints the error on one line"
    return message


@pytest.mark.parametrize("stage", ["train", "generate"])
@pytest.mark.parametrize("tokenizer", ["tokenizer", "tokenizer_2"])
def test_an_sdxl_folder_without_its_tokenizer_files_stops_train_and_generate(
    tiny_models, cpu, tmp_path, stage, tokenizer
):
    folder = _copy(tiny_models, tmp_path, "sdxl", keep_build=False)
    _without_tokenizer_files(folder / tokenizer)
    models = tiny_models.model_copy(update={"base": str(folder)})
    with pytest.raises(ModelLoadError) as info:
        SdxlParts(models, cpu.device, cpu.dtype) if stage == "train" else load_pipeline(models, cpu)
    message = _one_line(info)
    assert f"could not load the {tokenizer.replace('_', ' ')} (models.sdxl.base = {folder})" in message
    encoder = tokenizer.replace("tokenizer", "text_encoder")
    assert f"missing {tokenizer}/vocab.json and {tokenizer}/merges.txt (or {tokenizer}/tokenizer.json" in message
    # its special tokens only: 2, or 3 with the second tokenizer's pad token "!"
    assert re.search(rf"a tokenizer of [23] tokens, but {encoder}/ reads {bpe.VOCAB_SIZE}", message)
    assert f"--include '{tokenizer}/*' --local-dir {folder}`" in message


def test_a_flux2_klein_folder_without_its_tokenizer_files_stops_multiref(tiny_models, cpu, tmp_path):
    """The same silent 2-token tokenizer from Flux2KleinPipeline.from_pretrained: multiref's loader names it."""
    folder = _copy(tiny_models, tmp_path, "flux2_klein", keep_build=False)
    vocab = json.loads((folder / "text_encoder" / "config.json").read_text())["vocab_size"]
    _without_tokenizer_files(folder / "tokenizer")
    with pytest.raises(ModelLoadError) as info:
        load_multiref_pipeline(tiny_models.model_copy(update={"multiref": str(folder)}), cpu)
    message = _one_line(info)
    assert f"could not load the FLUX.2 klein tokenizer (models.sdxl.multiref = {folder})" in message
    assert "missing tokenizer/vocab.json and tokenizer/merges.txt (or tokenizer/tokenizer.json" in message
    assert f"a tokenizer of 2 tokens, but text_encoder/ reads {vocab}" in message
    assert f"--include 'tokenizer/*' --local-dir {folder}`" in message


def test_the_clip_scorers_processor_without_its_tokenizer_files(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "clip", keep_build=True)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as info:
        ClipScorer(str(folder), cpu)
    message = _one_line(info)
    assert f"CLIP processor (models.sdxl.clip = {folder})" in message
    assert "missing vocab.json and merges.txt (or tokenizer.json" in message and "a tokenizer of 2 tokens" in message
    assert f"delete {folder.parent} and rerun" in message  # a tiny build: rebuilt, not downloaded


def test_the_detectors_processor_without_its_tokenizer_files(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "detector", keep_build=False)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as info:
        CharacterDetector(str(folder), cpu)
    message = _one_line(info)
    assert f"Grounding DINO processor (models.sdxl.detector = {folder})" in message
    assert "missing vocab.txt (or tokenizer.json, which replaces it)" in message
    assert "or point models.sdxl.detector at a complete folder" in message


def test_a_weights_file_lacking_tensors_does_not_load_them_at_random(tiny_models, cpu, tmp_path):
    folder = _copy(tiny_models, tmp_path, "sdxl", keep_build=False)
    weights = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(tiny_models.model_copy(update={"base": str(folder)}), cpu)
    message = _one_line(info)
    assert f"could not load the text encoder (models.sdxl.base = {folder})" in message
    assert f"the weights in text_encoder/ lack 1 of the model's tensors ({dropped})" in message


def test_a_tokenizer_of_another_model_is_named_as_such(tiny_models):
    """Its files are all there (no file to name), but it does not fit the embedding table that reads its ids."""
    tokenizer = bpe.clip_tokenizer()
    with pytest.raises(IncompleteModel) as info:
        check_tokenizer(tokenizer, 1000, source=tiny_models.base, subfolder="tokenizer", reader="text_encoder/")
    assert info.value.missing is None and "come from different models" in str(info.value)
    check_tokenizer(tokenizer, bpe.VOCAB_SIZE, source=tiny_models.base, subfolder="tokenizer", reader="text_encoder/")


# --- the hub, through the real client, in subprocesses --------------------------------------------------------

HUB_CASES = [
    # name, kind, the models.sdxl fields it sets
    ("misspelt", "base", {"base": f"{ORG}/stable-diffusion-xl-bsae-1.0"}),
    ("private", "clip", {"clip": f"{ORG}/private-clip"}),
    ("gated", "base", {"base": f"{ORG}/gated-sdxl"}),
    ("gated_no_access", "controlnet", {"controlnet": f"{ORG}/gated-controlnet"}),
    ("disabled", "vae", {"vae": f"{ORG}/disabled-vae"}),
    (
        "no_weight_file",
        "ip_adapter",
        {"ip_adapter": f"{ORG}/ip-adapter", "ip_adapter_subfolder": "sdxl_models", "ip_adapter_weight": "ipa.bin"},
    ),
    ("no_faceid_file", "faceid", {"faceid_adapter": f"{ORG}/faceid", "faceid_adapter_weight": "faceid.bin"}),
]
HUB_REPOS = {
    f"{ORG}/private-clip": PRIVATE,
    f"{ORG}/gated-sdxl": GATED,
    f"{ORG}/gated-controlnet": GATED_FORBIDDEN,
    f"{ORG}/disabled-vae": DISABLED,
    f"{ORG}/ip-adapter": NO_SUCH_FILE,
    f"{ORG}/faceid": NO_SUCH_FILE,
}
OFFLINE_CASES = [
    ("base", "base", {"base": f"{ORG}/sdxl"}),
    ("clip", "clip", {"clip": f"{ORG}/clip"}),
    ("ip_adapter", "ip_adapter", {"ip_adapter": f"{ORG}/ip-adapter", "ip_adapter_subfolder": "sdxl_models"}),
    ("train", "train", {"base": f"{ORG}/sdxl"}),
]
# Each stage's first load; without the one probe (hub_access.py), transformers' downloads retried for ~23 s per file
# when refused, and a tokenizer asks for ten files.
UNREACHABLE_CASES = [
    ("train", "train", {"base": f"{ORG}/sdxl"}),
    ("base", "base", {"base": f"{ORG}/sdxl"}),
    ("clip", "clip", {"clip": f"{ORG}/clip"}),
    ("detector", "detector", {"detector": f"{ORG}/grounding-dino"}),
]
FAST = 30  # seconds: the most a first load may take to fail without network


def _start(tiny_models, cases: list, env_update: dict[str, str], hf_home: Path) -> tuple[subprocess.Popen, Path]:
    """tests/models/load_cases.py on `cases`, in a clean Hugging Face environment (own cache, no token) plus
    `env_update`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO), **env_update)
    hf_home.mkdir(parents=True)
    # The logs go to a file: a full stderr pipe would block the process while its stdout is read.
    log = hf_home / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CASES_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=REPO,
            text=True,
        )
    proc.stdin.write(json.dumps({"models": tiny_models.model_dump(mode="json"), "cases": cases}))
    proc.stdin.close()
    return proc, log


def _results(proc: subprocess.Popen, log: Path) -> dict:
    try:
        out = proc.stdout.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> dict:
    """Every hub case, run at once in four subprocesses (importing torch and diffusers is most of their time)
    while the local hub server, a closed port and a silent one stand:
    {"hub"|"offline"|"unreachable"|"hanging": {case: result}, "<name>_log": its stderr}."""
    home = tmp_path_factory.mktemp("hf")
    with HubServer(HUB_REPOS) as hub, socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes connections, nobody ever answers: a hub that hangs
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}"
        procs = {
            "hub": _start(tiny_models, HUB_CASES, {"HF_ENDPOINT": hub.url}, home / "hub"),
            "offline": _start(tiny_models, OFFLINE_CASES, {"HF_HUB_OFFLINE": "1"}, home / "offline"),
            "unreachable": _start(tiny_models, UNREACHABLE_CASES, {"HF_ENDPOINT": unreachable}, home / "down"),
            "hanging": _start(tiny_models, UNREACHABLE_CASES[:1], {"HF_ENDPOINT": hanging}, home / "hanging"),
        }
        results = {name: _results(*started) for name, started in procs.items()}
        logs = {f"{name}_log": log.read_text() for name, (_, log) in procs.items()}
    return results | logs | {"hub_server": hub, "unreachable_endpoint": unreachable, "hanging_endpoint": hanging}


def _message(results: dict, case: str) -> str:
    assert results[case]["error"] == "ModelLoadError", f"{case}: {results[case]}"
    message = results[case]["message"]
    assert "\n" not in message, "a stage prints the error on one line"
    return message


def test_every_hub_case_reached_the_local_hub(runs):
    for _, _, fields in HUB_CASES:
        repo = next(v for k, v in fields.items() if v.startswith(ORG))
        assert runs["hub_server"].asked_for(repo), f"the client never asked the local hub for {repo}"


def test_a_misspelt_repo_id(runs):
    message = _message(runs["hub"], "misspelt")
    assert f"models.sdxl.base = {ORG}/stable-diffusion-xl-bsae-1.0" in message
    assert "no repo" in message and "a misspelt id" in message and "check models.sdxl.base" in message


def test_a_private_repo_without_a_login(runs):
    message = _message(runs["hub"], "private")
    assert "models.sdxl.clip" in message and "private repo" in message and "`hf auth login`" in message


def test_a_gated_repo_without_a_login(runs):
    message = _message(runs["hub"], "gated")
    assert f"{ORG}/gated-sdxl is a gated repo and this machine is not logged in" in message
    assert "accept its licence on" in message and "HF_TOKEN" in message


def test_a_gated_repo_whose_licence_was_not_accepted(runs):
    message = _message(runs["hub"], "gated_no_access")
    assert "models.sdxl.controlnet" in message and "your account has no access yet" in message
    assert f"/{ORG}/gated-controlnet (logged in)" in message


def test_a_disabled_repo(runs):
    message = _message(runs["hub"], "disabled")
    assert "models.sdxl.vae" in message and "the hub has disabled" in message


def test_a_repo_missing_the_weight_file(runs):
    message = _message(runs["hub"], "no_weight_file")
    assert f"the repo {ORG}/ip-adapter has no sdxl_models/ipa.bin" in message
    assert "models.sdxl.ip_adapter_subfolder, ip_adapter_weight" in message


def test_a_faceid_repo_missing_the_weight_file(runs):
    message = _message(runs["hub"], "no_faceid_file")
    assert "IP-Adapter FaceID (models.sdxl.faceid_adapter" in message and "has no faceid.bin" in message


@pytest.mark.parametrize("case, setting", [(c, c if c != "train" else "base") for c, _, _ in OFFLINE_CASES])
def test_offline_and_not_in_the_cache(runs, case, setting):
    message = _message(runs["offline"], case)
    assert f"models.sdxl.{setting} = {ORG}/" in message
    assert "HF_HUB_OFFLINE is set" in message and "not in the Hugging Face cache" in message
    assert re.search(rf"`hf download {ORG}/\S+ .*--local-dir .cache/hub/", message)
    assert "or unset HF_HUB_OFFLINE" in message


def test_offline_download_command_reads_only_the_adapters_subfolder(runs):
    assert f"`hf download {ORG}/ip-adapter --include 'sdxl_models/*' --local-dir" in _message(
        runs["offline"], "ip_adapter"
    )
    assert "--include" not in _message(runs["offline"], "train")  # a pipeline needs its whole repo


def test_an_unreachable_hub(runs):
    message = _message(runs["unreachable"], "base")
    assert f"the hub {runs['unreachable_endpoint']} could not be reached" in message
    assert "Connection refused" in message
    assert f"`hf download {ORG}/sdxl --local-dir .cache/hub/{ORG}--sdxl`" in message


@pytest.mark.parametrize(
    "case, setting", [("train", "base"), ("base", "base"), ("clip", "clip"), ("detector", "detector")]
)
def test_without_network_every_first_load_fails_fast_with_the_fix(runs, case, setting):
    """No HF_HUB_OFFLINE: one probe finds the hub unreachable and the process goes offline, so the first load (of
    train's tokenizer, generate's pipeline, the scorer's CLIP, evaluate's detector) fails in seconds, not minutes."""
    result = runs["unreachable"][case]
    assert result["seconds"] < FAST, f"{case}: {result['seconds']:.1f} s"
    message = _message(runs["unreachable"], case)
    assert f"(models.sdxl.{setting} = {ORG}/" in message
    assert f"the hub {runs['unreachable_endpoint']} could not be reached" in message
    assert "Fix: check the network (and HF_ENDPOINT), or on a machine with network run `hf download" in message


def test_a_hub_that_never_answers_fails_the_first_load_fast(runs):
    result = runs["hanging"]["train"]
    assert result["seconds"] < FAST, f"{result['seconds']:.1f} s"
    message = _message(runs["hanging"], "train")
    assert f"the hub {runs['hanging_endpoint']} could not be reached" in message and "models.sdxl.base" in message


def test_without_network_the_log_says_so_once_and_never_retries(runs):
    for log in (runs["unreachable_log"], runs["hanging_log"]):
        assert log.count("cannot be reached") == 1, log[-3000:]
        assert "models load from the Hugging Face cache" in log
        assert "Retrying in" not in log
