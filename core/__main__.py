"""``python -m core <command>``: the command line for batch work."""

from core.cli import main

raise SystemExit(main())
