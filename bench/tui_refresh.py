"""TUI refresh and key-press latency on a recorded 4,096-node x 8-GPU cluster with 2,000 jobs.

    .venv/bin/python bench/tui_refresh.py [--help]
"""

import sys

from pitstop.tui.bench import main

if __name__ == "__main__":
    sys.exit(main())
