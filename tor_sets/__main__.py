"""``python -m tor_sets``."""

from tor_sets.cli import main

raise SystemExit(main())
