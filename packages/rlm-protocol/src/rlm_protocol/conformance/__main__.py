"""``python -m rlm_protocol.conformance -- GUEST-COMMAND...``: the kit without the rlm host."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
