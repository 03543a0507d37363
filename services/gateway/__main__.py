"""`python -m services.gateway ARGS...`: the example API gateway (docs/gateway.md); `main`'s
return value is the exit status."""

from __future__ import annotations

import sys

from services.gateway.app import main

if __name__ == "__main__":
    sys.exit(main())
