"""`python -m bench ...`: the same as `fxforge bench ...`."""

import sys

from fxforge.bench.harness import build_namespace, main

if __name__ == "__main__":
    sys.exit(main(build_namespace()))
