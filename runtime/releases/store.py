"""The release store: agent code, content-addressed, checked before every use.

A release is a folder `<releases>/<sha256>/` holding a copy of what was
deployed: one file, or a folder's regular files and subfolders. Its name is
the digest of its contents (see `tree_digest`), so the same code deployed
twice is stored once, and `verify` can tell at any time whether a release is
still exactly what was deployed.

Adding one is atomic: the copy is made in a staging folder beside the
releases, every file fsynced as it is written (and its digest computed from
the bytes written), the files and folders made read-only for the runtime's
user alone, the folder renamed
to its digest and the parent fsynced. A crash leaves either no release or a
whole one (a staging folder left behind is removed at the next start).
Nothing here knows about agents: which agent runs which release is the
rollouts' record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import uuid
from pathlib import Path

MAX_BYTES = 1 << 30  # a release larger than this is refused (edge hosts' disks)
MAX_FILES = 100_000
SKIPPED = frozenset({"__pycache__", ".git"})  # never part of a release
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_STAGING = ".staging-"
_CHUNK = 1 << 20


class ReleaseError(Exception):
    """A release cannot be added or used; str() says what and what to do."""


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entries(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative posix path, path, lstat) of every entry under root, sorted; refuses what
    a release cannot hold."""
    out = []
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in [*dirs, *sorted(files)]:
            path = Path(folder) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                raise ReleaseError(f"{path} is a symbolic link; a release holds regular files "
                                   "and folders only (copy the target in instead)")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise ReleaseError(f"{path} is not a regular file or folder")
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if total > MAX_BYTES or len(out) >= MAX_FILES:
                raise ReleaseError(f"{root} is too large for a release (more than "
                                   f"{MAX_BYTES >> 20} MiB or {MAX_FILES} files)")
            out.append((rel, path, st))
    return sorted(out, key=lambda e: e[0])


def _line(rel: str, st: os.stat_result, sha: str | None) -> bytes:
    if sha is None:
        return f"D {rel}\n".encode()
    executable = "x" if st.st_mode & stat.S_IXUSR else "-"
    return f"F {rel} {executable} {sha}\n".encode()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """The sha256 of a release folder: over one line per entry, in path order, naming
    each folder, and each file with its executable bit and the sha256 of its bytes."""
    manifest = hashlib.sha256()
    for rel, path, st in _entries(root):
        manifest.update(_line(rel, st, None if stat.S_ISDIR(st.st_mode) else _file_sha(path)))
    return manifest.hexdigest()


def verify(root: str | os.PathLike[str], digest: str) -> None:
    """Check that the release folder `root` still hashes to `digest`; ReleaseError if not
    (a file changed, added, removed, or the folder is gone)."""
    path = Path(root)
    if not path.is_dir():
        raise ReleaseError(f"the release folder {path} is missing")
    try:
        found = tree_digest(path)
    except OSError as exc:
        raise ReleaseError(f"cannot read the release folder {path}: {exc}") from None
    if found != digest:
        raise ReleaseError(f"the release folder {path} was changed after it was deployed "
                           f"(its contents hash to {found[:12]}, not {digest[:12]}); "
                           "deploy it again")


class ReleaseStore:
    """Releases under one folder (in the data dir), by digest. Blocking file I/O: call it
    from a worker thread inside the runtime."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, digest: str) -> Path:
        """The folder of release `digest` (it may not exist)."""
        if not _DIGEST.match(digest):
            raise ReleaseError(f"{digest!r} is not a release digest")
        return self.directory / digest

    def digests(self) -> list[str]:
        """Every stored release."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if _DIGEST.match(p.name))

    def add(self, source: str | os.PathLike[str]) -> tuple[str, Path, bool]:
        """Copy `source` (a file or a folder) in as a release; (digest, folder, whether it
        is new). An existing release with that digest is reused if it verifies, and
        replaced by the new copy if it does not."""
        src = Path(source)
        try:
            st = src.stat()
        except OSError as exc:
            raise ReleaseError(f"cannot read {src}: {exc.strerror or exc}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ReleaseError(f"{src} is not a file or a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f"{_STAGING}{uuid.uuid4().hex}"
        staging.mkdir(mode=0o700)
        try:
            try:
                digest = self._copy(src, staging, stat.S_ISDIR(st.st_mode))
            except OSError as exc:
                raise ReleaseError(f"cannot copy {src} into the release store: {exc}") from None
            final = self.directory / digest
            if final.exists():
                try:
                    verify(final, digest)
                    return digest, final, False
                except ReleaseError:
                    self._remove(final)  # damaged: the fresh copy replaces it
            os.rename(staging, final)
            fsync_dir(self.directory)
            return digest, final, True
        finally:
            if staging.exists():
                self._remove(staging)

    def _copy(self, src: Path, staging: Path, is_dir: bool) -> str:
        """Copy src into staging, fsyncing each file; the digest of what was written."""
        entries = _entries(src) if is_dir else [(src.name, src, src.stat())]
        manifest = hashlib.sha256()
        folders = [staging]
        for rel, path, st in entries:
            target = staging / rel
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(mode=0o700)
                folders.append(target)
                manifest.update(_line(rel, st, None))
                continue
            h = hashlib.sha256()
            with open(path, "rb") as fin, open(target, "xb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    h.update(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(target, 0o500 if st.st_mode & stat.S_IXUSR else 0o400)
            manifest.update(_line(rel, st, h.hexdigest()))
        for folder in reversed(folders):  # deepest first: a read-only folder takes no entry
            fsync_dir(folder)
            os.chmod(folder, 0o500)  # read-only, the runtime's user only
        return manifest.hexdigest()

    def remove(self, digest: str) -> bool:
        """Delete release `digest`; whether it existed."""
        path = self.path(digest)
        if not path.exists():
            return False
        self._remove(path)
        fsync_dir(self.directory)
        return True

    def clean_staging(self) -> int:
        """Remove staging folders a crash left behind; how many."""
        if not self.directory.is_dir():
            return 0
        left = [p for p in self.directory.iterdir() if p.name.startswith(_STAGING)]
        for path in left:
            self._remove(path)
        return len(left)

    @staticmethod
    def _remove(path: Path) -> None:
        # Releases are read-only: make the folders writable so their entries can go.
        for folder, dirs, _ in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(Path(folder) / d, 0o700)
        shutil.rmtree(path, ignore_errors=True)
