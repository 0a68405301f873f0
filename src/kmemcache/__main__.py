"""``python -m kmemcache``: the same as the ``kmemcache`` command."""

import sys

from .cli import main

sys.exit(main())
