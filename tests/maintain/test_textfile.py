"""The node_exporter textfile: an atomic write of the segment's exposition."""

from __future__ import annotations

import os
import stat
import types
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.http.metrics import wants_openmetrics
from runtime.maintain.report import MaintainError
from runtime.maintain.textfile import metrics_textfile, task_metrics_textfile, write_textfile
from shm import Counter, Gauge, Segment, SegmentNotLiveError
from tests.store.conftest import small_fs  # noqa: F401 - the fixture


def test_the_file_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "outpost.prom"
    write_textfile(path, "a 1\n")
    first = path.stat().st_ino
    assert write_textfile(path, "a 2\n") == 4
    assert path.read_text() == "a 2\n"
    assert path.stat().st_ino != first  # renamed over: a reader has the old or the new file
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["outpost.prom"]  # no temporary left behind


def test_only_prom_files_are_read_by_the_collector(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"reads only \*\.prom files"):
        write_textfile(tmp_path / "outpost.txt", "")


def test_a_full_disk_leaves_the_old_file(small_fs: Path) -> None:  # noqa: F811
    path = small_fs / "outpost.prom"
    write_textfile(path, "a 1\n")
    with pytest.raises(OSError, match="No space left"):
        write_textfile(path, "b 2\n" * (2 << 20))  # 8 MiB on a 4 MiB filesystem
    assert path.read_text() == "a 1\n"
    assert sorted(os.listdir(small_fs)) == ["outpost.prom"]


def test_live_metrics_are_written_and_parse(tmp_path: Path) -> None:
    with Segment.create(tmp_path / "outpost.shm", 64) as segment:
        Counter(segment, "a:restarts").add(2)
        Gauge(segment, "outpost:agents_up").set(1)
        done = metrics_textfile(segment.path, tmp_path / "outpost.prom", {"agents_up": "Up."})
    assert done["samples"] == 2
    families = {f.name: f for f in text_string_to_metric_families(
        (tmp_path / "outpost.prom").read_text())}
    assert families["outpost_restarts"].samples[0].value == 2
    assert families["outpost_agents_up"].documentation == "Up."


def test_without_a_live_runtime_no_stale_values_are_left(tmp_path: Path) -> None:
    path = tmp_path / "outpost.prom"
    write_textfile(path, "outpost_agents_up 3\n")
    with pytest.raises(SegmentNotLiveError):
        metrics_textfile(tmp_path / "missing.shm", path)
    assert path.read_text() == "# outpost: no live runtime\n"


async def test_the_maintenance_task_reports_problems_it_can_name(tmp_path: Path) -> None:
    m = types.SimpleNamespace(config=types.SimpleNamespace(segment_path=tmp_path / "x.shm"))
    with pytest.raises(MaintainError, match="needs a file"):
        await task_metrics_textfile(m)  # type: ignore[arg-type]
    with pytest.raises(MaintainError, match="no shared-memory segment"):
        await task_metrics_textfile(m, str(tmp_path / "o.prom"))  # type: ignore[arg-type]
    with Segment.create(tmp_path / "x.shm", 16):
        result = await task_metrics_textfile(m, str(tmp_path / "o.prom"))  # type: ignore[arg-type]
    assert result.ok and "wrote" in result.summary


@pytest.mark.parametrize(("accept", "wanted"), [
    ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
    ("application/openmetrics-text; version=0.0.1", True),
    ("text/plain;version=0.0.4", False),
    ("*/*", False),
    ("", False),
    ("application/openmetrics-text;q=0", False),
])
def test_openmetrics_only_when_asked(accept: str, wanted: bool) -> None:
    assert wants_openmetrics(accept) is wanted
