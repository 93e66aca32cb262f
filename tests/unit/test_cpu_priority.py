"""The web's CPU priority (``WEB_CPU_NICE``): parsed strictly, applied to the process
and the processes it starts, never raised, and to the session's scheduling group only
when the process leads its session. Each case runs in a child process: a niceness
cannot be taken back without privileges, and the test run must keep its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webapp.cpu_priority import parse_niceness

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, os, sys
from pathlib import Path
from webapp.cpu_priority import lower_cpu_priority
autogroup = Path(sys.argv[2])
done = lower_cpu_priority(int(sys.argv[1]), autogroup)
pid = os.fork()  # what the process starts later runs at its niceness too
if pid == 0:
    print(json.dumps({"child": os.getpriority(os.PRIO_PROCESS, 0)}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({
    "done": done,
    "niceness": os.getpriority(os.PRIO_PROCESS, 0),
    "autogroup": autogroup.read_text() if autogroup.exists() else None,
}))
"""


def _run(niceness: int, autogroup: Path, *, own_session: bool, start_at: int = 0) -> dict:
    def start_nicer() -> None:
        os.nice(start_at)

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(niceness), str(autogroup)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
        preexec_fn=start_nicer if start_at else None,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {k: v for line in lines for k, v in line.items()}


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 10), ("", 10), ("0", 0), (" 7 ", 7), ("19", 19)]
)
def test_a_niceness_from_0_to_19_is_taken_and_an_unset_one_is_the_default(raw, expected):
    assert parse_niceness(raw, 10) == expected


@pytest.mark.parametrize("raw", ["high", "-1", "20", "1.5", "-5"])
def test_anything_else_is_refused_with_the_setting_named(raw):
    with pytest.raises(ValueError, match=r"WEB_CPU_NICE must be a whole number from 0 to 19"):
        parse_niceness(raw, 10)


@pytest.mark.parametrize(
    ("group_before", "own_session", "start_at", "niceness", "group_after", "done"),
    [
        # not the leader of its session: the group is shared with its parent, left alone
        ("/autogroup-1 nice 0\n", False, 0, 7, "/autogroup-1 nice 0\n", "niceness 7"),
        # the leader of its session lowers its group's priority too
        ("/autogroup-1 nice 3\n", True, 0, 7, "7", "niceness 7, session group niceness 7"),
        # already at a lower priority: never raised, neither the process nor the group
        (
            "/autogroup-1 nice 15\n",
            True,
            12,
            12,
            "/autogroup-1 nice 15\n",
            "niceness 12, session group niceness 15",
        ),
    ],
)
def test_the_process_what_it_starts_and_its_session_group_run_at_the_niceness(
    tmp_path, group_before, own_session, start_at, niceness, group_after, done
):
    group = tmp_path / "autogroup"
    group.write_text(group_before)
    result = _run(7, group, own_session=own_session, start_at=start_at)
    assert result["niceness"] == niceness
    assert result["child"] == niceness  # what it starts later runs at its niceness too
    assert result["autogroup"] == group_after
    assert result["done"] == done


def test_the_kernels_own_session_group_takes_the_niceness(tmp_path):
    """With the kernel's real ``/proc/self/autogroup``; a kernel without session groups
    has no such file, and only the process's niceness is set."""
    result = _run(6, Path("/proc/self/autogroup"), own_session=True)
    assert result["niceness"] == 6
    if result["autogroup"] is None:
        assert result["done"] == "niceness 6"
    else:
        assert result["autogroup"].split()[-2:] == ["nice", "6"]
        assert result["done"] == "niceness 6, session group niceness 6"
