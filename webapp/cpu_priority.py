"""The web's CPU priority against the outbox relay and the workers on the same machine
(``WEB_CPU_NICE``, default 0: the same priority).

When every core is busy, a web at the workers' priority can take the cycles they
need: the outbox grows, and the mails go out later the longer the load lasts, to be
caught up once it eases. That is the outbox absorbing a burst, and it keeps the web
fast. Where mails must stay current under sustained load instead, ``WEB_CPU_NICE``
above 0 runs the web at lower priority: it slows down first, and the relay and the
workers keep up. The benchmark measured both (bench/ANALYSIS.md): at niceness 10 the
outbox stayed empty through every write scenario, for fewer requests a second, since
small jobs cost the workers more per message than a backlog drained in batches.

A niceness counts among the processes of one scheduling group. Linux groups the
processes of a session ("autogroup": on by default, for processes outside a cgroup
of their own) and shares the CPU between the groups first, so a web that leads its
own session (started with ``setsid``) also lowers its group's priority. Under docker
compose each service is a cgroup of its own, where ``cpu_shares`` does this job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: the lowest priority Linux has
MAX_NICENESS = 19
AUTOGROUP = Path("/proc/self/autogroup")
_AUTOGROUP_NICE = re.compile(r"\bnice\s+(-?\d+)")


def parse_niceness(raw: str | None, default: int) -> int:
    """``WEB_CPU_NICE``: a whole number from 0 (the workers' priority) to 19."""
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_NICENESS:
        raise ValueError(
            f"WEB_CPU_NICE must be a whole number from 0 to {MAX_NICENESS} "
            f"(0: the same priority as the relay and the workers), got {raw!r}"
        )
    return value


def lower_cpu_priority(niceness: int, autogroup: Path = AUTOGROUP) -> str:
    """Run this process, and the processes and threads it starts from now on, at
    ``niceness`` or lower priority (never higher: that needs privileges); also its
    session's scheduling group when the process leads the session. Returns what was
    done, for the log."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    done = [f"niceness {max(niceness, current)}"]
    if os.getsid(0) != os.getpid() or not autogroup.exists():
        return done[0]
    try:
        found = _AUTOGROUP_NICE.search(autogroup.read_text())
        group = int(found.group(1)) if found else 0
        if niceness > group:
            autogroup.write_text(str(niceness))
        done.append(f"session group niceness {max(niceness, group)}")
    except OSError as error:
        done.append(f"session group unchanged ({error.strerror or error})")
    return ", ".join(done)
