"""``python -m quartsig``: the same console script, for when it is not on PATH."""

from quartsig.cli import main

raise SystemExit(main())
