"""Compatibility shim for bench/ (imports it, and soak.py runs ``python tests/upstream.py``): the fake is in
tests/support/upstream.py. Tests import ``support.upstream``; remove this file once bench/ does too.
"""

from support.upstream import *  # noqa: F401,F403
from support.upstream import main

if __name__ == "__main__":
    main()
