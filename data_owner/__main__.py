"""``python -m fair4free.data_owner`` runs ``fair4free-owner``."""

import sys

from fair4free.data_owner.cli import main

sys.exit(main())
