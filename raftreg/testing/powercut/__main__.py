"""`python -m raftreg.testing.powercut --store ... --mount ...`: one power-cut FUSE daemon."""

from raftreg.testing.powercut.daemon import main

main()
