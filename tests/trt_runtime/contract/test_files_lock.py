"""`trt_runtime.contract.files.exclusive_lock`: one holder at a time, threads of one process included; never a
lock file through a symbolic link."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trt_runtime.contract.files import UnsafePathError, exclusive_lock


def test_a_second_thread_waits_until_the_first_releases(tmp_path: Path):
    events: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with exclusive_lock(tmp_path / "cache" / ".lock", root=tmp_path):
            events.append("first acquired")
            held.set()
            release.wait(timeout=30)
            events.append("first releases")

    def second() -> None:
        held.wait(timeout=30)
        with exclusive_lock(tmp_path / "cache" / ".lock", root=tmp_path):
            events.append("second acquired")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    held.wait(timeout=30)
    threads[1].join(timeout=0.3)  # it cannot get the lock while the first holds it
    assert threads[1].is_alive() and events == ["first acquired"]
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert events == ["first acquired", "first releases", "second acquired"]


def test_a_lock_file_that_is_a_link_is_refused(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text("not ours")
    (tmp_path / ".lock").symlink_to(target)
    with pytest.raises(UnsafePathError, match="is a symbolic link"), exclusive_lock(tmp_path / ".lock"):
        pass
    assert target.read_text() == "not ours"
