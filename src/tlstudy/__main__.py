"""python -m tlstudy: the `tlstudy` command (tlstudy.cli), for where the console script is not on PATH."""

import sys

from tlstudy.cli import main

sys.exit(main())
