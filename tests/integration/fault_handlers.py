"""Test-only async handler, loaded by a worker through LES_EXTRA_HANDLER_MODULES.

``LES_TEST_BLOCK_DIR``: the handler writes ``<dir>/pid`` (its process id) and
waits while ``<dir>/gate`` exists — a handler stuck mid-flight, to be SIGKILLed or
SIGTERMed. It runs after the service's own RegistrationCreated handlers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from webapp.domain.messages import RegistrationCreated
from webapp.services.messagebus import handles


@handles(RegistrationCreated, asynchronous=True)
def hold_while_gate_exists(message: RegistrationCreated, ctx: Any) -> None:
    directory = os.environ.get("LES_TEST_BLOCK_DIR")
    if not directory:
        return
    folder = Path(directory)
    (folder / "pid").write_text(str(os.getpid()))
    (folder / f"started-{message.registration_id}").touch()
    deadline = time.monotonic() + 60
    while (folder / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / f"finished-{message.registration_id}").touch()
