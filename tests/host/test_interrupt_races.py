"""Interrupts that race a block's start, in a session process of its own (a ``Session`` takes
over the process's descriptors 1 and 2, so each case runs in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

#: A session whose block 1 was asked to stop before it started (the agent wrote the slot, its
#: SIGINT still on the way); the SIGINT lands while the start's KeyboardInterrupt is handled.
LATE_SIGNAL = """
import json, os, signal
report = os.fdopen(os.dup(1), "w")  # the session's capture takes descriptor 1
import rlm_guest.session as session_module
from rlm_guest.capture import Capture
from rlm_guest.host_calls import HostCalls
from rlm_guest.interrupt_slot import InterruptSlot

slot = InterruptSlot()
session = session_module.Session(
    "s", send=lambda frame: None, host_calls=HostCalls(lambda frame: None), capture=Capture(),
    max_output_chars=1000, cwd=None, interrupts=slot,
)
session_module.install_sigint(session)
slot.request(1)
describe = session_module.exec_error

def late_signal(exc):
    signal.raise_signal(signal.SIGINT)  # the handler runs here, on this thread
    return describe(exc)

session_module.exec_error = late_signal
try:
    result = session.run(1, "x = 1", "python")
except KeyboardInterrupt:
    print(json.dumps({"escaped": True}), file=report, flush=True)
else:
    outcome = {"escaped": False, "interrupted": result.interrupted, "error": result.error.name}
    print(json.dumps(outcome), file=report, flush=True)
"""


def test_a_signal_behind_an_interrupt_found_at_the_start_does_not_end_the_process() -> None:
    done = subprocess.run([sys.executable, "-c", LATE_SIGNAL], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    # Escaped, the second KeyboardInterrupt ended the session process: a reset, state lost.
    assert outcome == {"escaped": False, "interrupted": True, "error": "KeyboardInterrupt"}
