"""Mirror what DVC can't save in time (paid captions, training checkpoints) to the project's DVC remote.

A DVC output is committed only when its stage finishes, and a stage can't `dvc push` (the running `dvc repro`
holds the repo lock). So a pod lost at training step 300 of 500 would lose 300 GPU-steps, and a caption cache
outside DVC would make the next pod pay for every caption again. Stages therefore copy these files, as they are
written, to `<default remote>/storyboard/...`, and fetch them from there when they are missing locally: the way
kohya's `--save_state_to_huggingface` / `--resume_from_huggingface` work, on the team's own remote.

The remote is the one `dvc push` uses: read from DVC's own config (`.dvc/config`, `config.local`, global and
system levels; reading takes no repo lock) and opened through DVC's filesystem classes (dvc-s3 for s3://), so
credentials come exactly as DVC gets them: environment, AWS profile, `credentialpath`. Nothing here prints them.

A remote that fails (down, wrong secret, missing bucket) never stops the stage: one warning with the reason, the
mirror switches itself off for the rest of the run, and the work goes on locally. No remote: a no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)


PREFIX = "storyboard"  # beside DVC's files/md5/ tree; `dvc gc -c` only looks at DVC's own objects


def _safe_url(url: str) -> str:
    """The remote's URL without any user:password part (never logged)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else ""))) if parts.netloc else url


class RemoteMirror:
    """Files under `<remote>/storyboard/`, addressed by relative POSIX paths."""

    def __init__(self, fs, root: str, label: str):
        self.fs = fs  # a dvc_objects FileSystem (dvc-s3's S3FileSystem for s3://)
        self.root = root.rstrip("/")
        self.label = label
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="remote-mirror")
        self._pending: list[Future] = []

    @classmethod
    def from_project(cls, start: Path | None = None) -> RemoteMirror | None:
        """The DVC default remote of the repo around `start` (the cwd), or None when there is none."""
        from dvc.config import Config
        from dvc.fs import get_cloud_fs
        from dvc.repo import Repo

        try:
            dvc_dir = Repo.find_dvc_dir(str(start or Path.cwd()))
        except Exception:
            return None  # not in a DVC repo (the CLI outside the project): nothing to mirror to
        try:
            config = Config(dvc_dir=dvc_dir)
            name = config["core"].get("remote")
            if not name:
                return None
            url = config["remote"][name]["url"]
            fs_cls, fs_config, path = get_cloud_fs(config, name=name)
            fs = fs_cls(**fs_config)
        except Exception as e:  # a broken remote config must not stop captioning or training
            logger.warning("remote mirror off: DVC remote config in %s unusable (%s: %s)", dvc_dir, type(e).__name__, e)
            return None
        return cls(fs, fs.join(path, PREFIX), f"'{name}' ({_safe_url(url)})")

    def _path(self, rel: str) -> str:
        return self.fs.join(self.root, *rel.split("/"))

    def _failed(self, what: str, e: BaseException) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = f"{type(e).__name__}: {e}"
                logger.warning(
                    "remote %s: %s failed (%s); going on without the remote for this run: fix it and rerun to "
                    "mirror the rest (check the bucket, `dvc remote modify`, AWS_* credentials)",
                    self.label,
                    what,
                    self.broken,
                )

    def put_file(self, local: Path, rel: str) -> bool:
        if self.broken or not Path(local).exists():  # gone already (a rotated-out checkpoint): nothing to send
            return False
        try:
            self.fs.put_file(os.fspath(local), self._path(rel))
            return True
        except Exception as e:
            self._failed(f"upload of {rel}", e)
            return False

    def get_file(self, rel: str, local: Path) -> bool:
        """Fetch `rel` to `local` (atomically); False when the remote doesn't have it or can't be read."""
        if self.broken:
            return False
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
        os.close(fd)
        try:
            self.fs.get_file(self._path(rel), tmp)
            os.replace(tmp, local)
            return True
        except FileNotFoundError:
            return False
        except Exception as e:
            self._failed(f"download of {rel}", e)
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def complete_dirs(self, rel: str, marker: str) -> list[str]:
        """Names of the folders directly under `rel` that hold `marker` (stores may keep emptied folders)."""
        if self.broken:
            return []
        try:
            base = self._path(rel)
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except Exception as e:
            self._failed(f"listing of {rel}", e)
            return []
        parts = (path[len(base) :].strip("/").split("/") for path in found)
        return sorted({p[0] for p in parts if len(p) == 2 and p[1] == marker})

    def put_dir(self, local: Path, rel: str, marker: str) -> bool:
        """Upload a folder, its `marker` file last: a folder without the marker on the remote is incomplete."""
        files = sorted(p for p in Path(local).rglob("*") if p.is_file() and p.name != marker)
        for path in [*files, Path(local) / marker]:
            if not self.put_file(path, f"{rel}/{path.relative_to(local).as_posix()}"):
                return False
        return True

    def get_dir(self, rel: str, local: Path, marker: str) -> bool:
        """Fetch a complete folder (it has `marker`) into `local`, atomically; False when there is none."""
        if self.broken or not self.exists(f"{rel}/{marker}"):
            return False
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            base = self._path(rel)
            for remote in self.fs.find(base):
                target = staged / remote[len(base) :].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, os.fspath(target))
            if not (staged / marker).exists():
                return False
            staged.rename(local)
            return True
        except Exception as e:
            self._failed(f"download of {rel}", e)
            return False
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def get_missing(self, rel: str, local: Path) -> int:
        """Fetch the files under `rel` that `local` lacks; how many came."""
        if self.broken:
            return 0
        try:
            base = self._path(rel)
            found = self.fs.find(base)
        except FileNotFoundError:
            return 0
        except Exception as e:
            self._failed(f"listing of {rel}", e)
            return 0
        fetched = 0
        for remote in found:
            name = remote[len(base) :].lstrip("/")
            if not (Path(local) / name).exists():
                fetched += self.get_file(f"{rel}/{name}", Path(local) / name)
        return fetched

    def exists(self, rel: str) -> bool:
        if self.broken:
            return False
        try:
            return self.fs.exists(self._path(rel))
        except Exception as e:
            self._failed(f"lookup of {rel}", e)
            return False

    def remove(self, rel: str) -> None:
        if self.broken:
            return
        try:
            self.fs.rm(self._path(rel), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as e:
            self._failed(f"removal of {rel}", e)

    def in_background(self, fn, /, *args) -> None:
        """Run an upload off the caller's thread (training goes on while a checkpoint travels), one at a time."""
        self._pending.append(self._uploads.submit(fn, *args))

    def wait(self) -> None:
        """Finish the background uploads (their failures were already reported as warnings)."""
        for future in self._pending:
            future.result()
        self._pending.clear()
