"""``python -m app.cli ...``: the ``hotdog`` command (the worker's --per-gpu and the Makefile
start it this way)."""

import sys

from app.cli.main import main

sys.exit(main())
