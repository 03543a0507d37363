"""`python -m raftreg.cli ARGS...`: the `raftreg` command; `main`'s return value is the exit
status."""

from __future__ import annotations

import sys

from raftreg.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
