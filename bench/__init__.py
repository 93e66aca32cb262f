"""The benchmark harness (``make bench``): see ``bench/harness.py`` and docs/PERFORMANCE.md."""
