"""The release store on a real filesystem: content addressing, atomic adds, verification."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.releases import ReleaseError, ReleaseStore, tree_digest, verify


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def writable(path: Path) -> None:
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for f in files:
            os.chmod(Path(folder) / f, 0o600)


def test_a_file_and_a_folder_become_read_only_releases_named_by_their_digest(
        tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    one = tmp_path / "agent.py"
    one.write_text("async def run(ctx): pass\n")
    digest, folder, new = store.add(one)
    assert new and folder == store.path(digest) and (folder / "agent.py").read_text() == \
        one.read_text()
    assert digest == tree_digest(folder) and len(digest) == 64
    assert stat.S_IMODE(os.stat(folder / "agent.py").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o500

    src = tree(tmp_path / "src", {"main.py": "x = 1\n", "lib/util.py": "y = 2\n",
                                  "__pycache__/main.cpython-311.pyc": "junk"})
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o700)
    d2, folder2, _ = store.add(src)
    assert sorted(p.relative_to(folder2).as_posix() for p in folder2.rglob("*")) == \
        ["lib", "lib/util.py", "main.py", "run.sh"]  # caches are not code
    assert os.access(folder2 / "run.sh", os.X_OK)
    assert store.digests() == sorted([digest, d2])


def test_the_same_content_is_stored_once_and_other_content_elsewhere(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    a = tree(tmp_path / "a", {"m.py": "1"})
    b = tree(tmp_path / "b", {"m.py": "1"})
    c = tree(tmp_path / "c", {"m.py": "2"})
    first, _, new = store.add(a)
    again, _, new_again = store.add(b)
    other, _, _ = store.add(c)
    assert new and not new_again and first == again != other
    os.chmod(c / "m.py", 0o700)  # the executable bit is part of what runs
    assert store.add(c)[0] != other


def test_verify_finds_any_change_after_the_deploy(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    digest, folder, _ = store.add(tree(tmp_path / "src", {"m.py": "1", "sub/n.py": "2"}))
    verify(folder, digest)  # as deployed
    writable(folder)
    for change in (lambda: (folder / "m.py").write_text("evil"),
                   lambda: (folder / "extra.py").write_text(""),
                   lambda: (folder / "sub" / "n.py").unlink(),
                   lambda: os.chmod(folder / "m.py", 0o700)):
        snapshot = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        change()
        with pytest.raises(ReleaseError, match="changed after it was deployed"):
            verify(folder, digest)
        for p in folder.rglob("*"):
            if p.is_file() and p not in snapshot:
                p.unlink()
        for p, data in snapshot.items():
            p.write_bytes(data)
            os.chmod(p, 0o600)
        verify(folder, digest)
    writable(folder)
    import shutil
    shutil.rmtree(folder)
    with pytest.raises(ReleaseError, match="missing"):
        verify(folder, digest)


def test_a_damaged_release_is_replaced_by_a_fresh_copy(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    src = tree(tmp_path / "src", {"m.py": "1"})
    digest, folder, _ = store.add(src)
    writable(folder)
    (folder / "m.py").write_text("half-writ")
    again, folder2, new = store.add(src)
    assert (again, folder2, new) == (digest, folder, True)
    verify(folder, digest)


def test_what_a_release_cannot_hold_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    src = tree(tmp_path / "src", {"m.py": "1"})
    (src / "link.py").symlink_to(src / "m.py")
    with pytest.raises(ReleaseError, match="symbolic link"):
        store.add(src)
    with pytest.raises(ReleaseError, match="cannot read"):
        store.add(tmp_path / "nowhere")
    assert store.digests() == [] and not any((tmp_path / "releases").iterdir())


def test_staging_left_by_a_crash_is_cleaned(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    left = tmp_path / "releases" / ".staging-deadbeef"
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "half.py").write_text("x")
    os.chmod(left / "sub", 0o500)
    assert store.clean_staging() == 1 and not left.exists()


def test_remove_deletes_a_read_only_release(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "releases")
    digest, folder, _ = store.add(tree(tmp_path / "src", {"a/b/c.py": "1"}))
    assert store.remove(digest) and not folder.exists() and not store.remove(digest)
    with pytest.raises(ReleaseError):
        store.path("../etc")
