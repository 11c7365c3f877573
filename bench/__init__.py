"""Benchmarks of rlm, side by side with the ceiling (raw virtio-serial), the seed's design
(marker + length + JSON over the emulated 16550 UART) and rlms (the RLM paper's library).

    uv run python -m bench [--json] [--quick]     # or: nox -s bench, rlm bench

Everything is measured in one run (one VM for the channel and exec workloads), so that the
ratios hold on a noisy machine even when the absolute figures move. Results go to
``bench/results/latest.json``; ``--json`` prints them on stdout instead of the table.
"""
