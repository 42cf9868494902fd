"""``python -m fair4free.consumer`` runs ``fair4free-consumer``."""

import sys

from fair4free.consumer.cli import main

sys.exit(main())
