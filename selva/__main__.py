"""``python -m selva ...``: see :mod:`selva.cli`."""
from .cli import main

raise SystemExit(main())
