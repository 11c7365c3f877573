"""A guest that reads everything and never says Hello."""

import sys

while sys.stdin.buffer.read(65536):
    pass
