"""A guest that reads everything and never says Hello."""

import sys

if __name__ == "__main__":
    while sys.stdin.buffer.read(65536):
        pass
