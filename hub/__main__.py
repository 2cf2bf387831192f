"""Allow `python -m hub`."""

from .cli import main

raise SystemExit(main())
