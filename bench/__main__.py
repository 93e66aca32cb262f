"""``python -m bench [--quick]``: see bench/harness.py."""

from bench.harness import main

raise SystemExit(main())
