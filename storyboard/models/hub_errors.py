"""Why a model did not load, in the user's words: each failure a user meets gets its own message and its fix.

diffusers and transformers wrap huggingface_hub's errors in OSError (some keep the original as `__cause__`, some
only as `__context__`, some keep nothing but its text), so the whole chain is searched for huggingface_hub's own
classes first and the wrappers' words are read only when no class says more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from storyboard.models.checks import IncompleteModel
from storyboard.models.hub_access import looks_like_path, unreachable_reason

# Written by the tiny builder at the root of each build: a folder under one is rebuilt, not downloaded.
TINY_BUILD_MARKER = "BUILT.json"
DOWNLOADS = ".cache/hub/"

# What the loaders say when a file is missing, in a local folder or a hub repo.
# Most precise first: the folder and file, the file's path in the repo, then the file name alone.
_MISSING_FILE = (
    re.compile(r"no file named (?P<file>.+?),? found in directory (?P<folder>\S+?)\.?$", re.M),
    re.compile(r"/resolve/[^/\s]+/(?P<file>\S+?)\.?$", re.M),  # huggingface_hub's EntryNotFound url
    re.compile(r"does not appear to have a file named (?P<file>\S+?)\.?$", re.M),
    re.compile(r"directory containing an? (?P<file>\S+) file", re.M),
)


@dataclass(frozen=True)
class ModelRef:
    """One model as the user named it: what it is, the params key, the hub id or folder, the files it needs."""

    what: str  # "SDXL base model"
    setting: str | None  # "models.sdxl.base"; None where no params key names it
    source: str  # a hub id (org/name) or a folder
    layout: str = ""  # the files it consists of, naming the keys that choose them
    part: str = ""  # the repo's subfolder that is all this model reads: the download command fetches only it
    subfolder: str = ""  # the component of a folder loaded (unet/): a folder's copy that lacks it needs only it


def failure_chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception it was raised from or while handling, nearest first, each once."""
    chain, todo, seen = [], [error], set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        todo += [current.__cause__, current.__context__]
    return chain


def is_loading_failure(error: BaseException) -> bool:
    """A failure of the model's files or of the way to them (explained to the user), not a bug (left to raise)."""
    hub = (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    return isinstance(error, OSError | ValueError) or any(isinstance(e, hub) for e in failure_chain(error))


def explain(ref: ModelRef, error: BaseException) -> str:
    """One line: which model, from where, what went wrong and what to do."""
    chain = failure_chain(error)
    name = f"{ref.setting} = {ref.source}" if ref.setting else ref.source
    head = f"could not load the {ref.what} ({name})"
    local = Path(ref.source).expanduser()
    if local.exists():
        problem, fix = _local_folder(ref, local, chain)
    elif looks_like_path(ref.source) or _first(chain, HFValidationError):
        problem = f"there is no folder {ref.source} (and it is not a hub id of the form org/name)"
        fix = f"set {ref.setting or 'it'} to a hub id or to a folder that exists"
    else:
        problem, fix = _hub(ref, chain)
    # the libraries' own words, unless the error is a check's (checks.py), whose words the problem holds already
    detail = "" if isinstance(error, IncompleteModel) else f" ({_detail(chain)})"
    return f"{head}: {problem}. Fix: {fix}.{detail}"


def _local_folder(ref: ModelRef, folder: Path, chain: list[BaseException]) -> tuple[str, str]:
    layout = f"; it should hold {ref.layout}" if ref.layout else ""
    incomplete = _first(chain, IncompleteModel)
    if incomplete is not None:  # loaded, but not what the folder should give
        found = f"missing {incomplete.missing}: {incomplete.found}" if incomplete.missing else incomplete.found
        problem = f"{found}{layout}"
    elif missing := _missing_file(chain, ref.subfolder):
        problem = f"{missing} is missing{layout}"
    else:
        problem = f"the folder does not hold a loadable {ref.what}{layout}"
    build = next((p for p in (folder, *folder.parents) if (p / TINY_BUILD_MARKER).is_file()), None)
    if build is not None:
        return problem, f"delete {build} and rerun: the tiny models are rebuilt from their seed"
    again = _download(ref, repo="<its hub id>", folder=ref.source, part=ref.part or ref.subfolder)
    return problem, f"download it again (`{again}`) or point {ref.setting or 'it'} at a complete folder"


def _hub(ref: ModelRef, chain: list[BaseException]) -> tuple[str, str]:
    login = "log in here (`hf auth login`, or set HF_TOKEN)"
    setting = ref.setting or "the model id"
    if gated := _first(chain, GatedRepoError):
        who = "this machine is not logged in" if _status(gated) == 401 else "your account has no access yet"
        return (
            f"{ref.source} is a gated repo and {who}",
            f"accept its licence on {constants.ENDPOINT}/{ref.source} (logged in), then {login}",
        )
    if _first(chain, RepositoryNotFoundError):
        return (
            f"no repo {ref.source} on the hub {constants.ENDPOINT} and no folder of that name here "
            "(a misspelt id, or a private repo this machine cannot see)",
            f"check {setting}; for a private repo, {login} with an account that can read it",
        )
    if _first(chain, DisabledRepoError):
        return f"the hub has disabled {ref.source}", f"choose another model for {setting}"
    if _first(chain, RevisionNotFoundError):
        return f"{ref.source} has no such revision", f"check {setting}"
    cache = constants.HF_HUB_CACHE
    if reason := unreachable_reason():  # this process went offline after one failed probe (hub_access.py)
        return _unreachable(ref, reason)
    if constants.HF_HUB_OFFLINE:
        return (
            f"HF_HUB_OFFLINE is set and {ref.source} is not in the Hugging Face cache ({cache})",
            f"on a machine with network run `{_download(ref)}`, copy that folder here and set {setting} to it "
            f"(or copy that machine's Hugging Face cache to {cache}); or unset HF_HUB_OFFLINE",
        )
    if unreachable := _first(chain, ConnectionError, TimeoutError) or _first(chain, LocalEntryNotFoundError):
        return _unreachable(ref, _first_line(unreachable))
    layout = f": the repo should hold {ref.layout}" if ref.layout else ""
    if incomplete := _first(chain, IncompleteModel):
        has_no = f"has no {incomplete.missing}: " if incomplete.missing else ""
        return f"the repo {ref.source} {has_no}{incomplete.found}", f"check {setting}{layout}"
    missing = _missing_file(chain)
    if missing and (_first(chain, EntryNotFoundError) or not _first(chain, HfHubHTTPError)):
        return f"the repo {ref.source} has no {missing}", f"check {setting}{layout}"
    if (http := _first(chain, HfHubHTTPError)) and _status(http) in (401, 403):
        return f"the hub refused access to {ref.source} ({_status(http)})", f"{login} with an account that can read it"
    if http:
        return (
            f"the hub answered {_status(http) or 'an error'} for {ref.source}",
            f"retry later; if it persists, check {setting} and the hub's status page",
        )
    return f"it did not load from the hub {constants.ENDPOINT}", f"check {setting}"


def _unreachable(ref: ModelRef, reason: str) -> tuple[str, str]:
    return (
        f"the hub {constants.ENDPOINT} could not be reached ({reason}) and {ref.source} is not in the Hugging Face "
        f"cache ({constants.HF_HUB_CACHE})",
        f"check the network (and HF_ENDPOINT), or on a machine with network run `{_download(ref)}`, copy that "
        f"folder here and set {ref.setting or 'the model id'} to it",
    )


def _download(ref: ModelRef, repo: str | None = None, folder: str | None = None, part: str | None = None) -> str:
    """The `hf` command that fetches what is read of the model (`part`: only that subfolder; default: the
    model's own part) into a folder `setting` can name."""
    repo = repo or ref.source
    part = ref.part if part is None else part
    include = f" --include '{part.strip('/')}/*'" if part else ""
    # Under .cache/, which git ignores: weights stay out of the repository.
    return f"hf download {repo}{include} --local-dir {folder or DOWNLOADS + repo.replace('/', '--')}"


def _missing_file(chain: list[BaseException], part: str = "") -> str | None:
    """The missing file the libraries name; `part`: the subfolder loaded, which diffusers leaves out of the
    folder it names."""
    for pattern in _MISSING_FILE:
        for error in chain:
            if match := pattern.search(str(error)):
                found = match.groupdict()
                if not found.get("folder"):
                    return found["file"]
                folder = found["folder"]
                if part and not folder.rstrip("/").endswith(part.strip("/")):
                    folder = f"{folder.rstrip('/')}/{part.strip('/')}"
                return f"{folder}/{found['file']}"
    return None


def _first(chain: list[BaseException], *classes: type[BaseException]) -> BaseException | None:
    return next((e for e in chain if isinstance(e, classes)), None)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:200]


def _detail(chain: list[BaseException]) -> str:
    """The library's own words, of the innermost error that says something: for a bug report, not for the user."""
    return " <- ".join(_first_line(e) for e in chain[:2])
