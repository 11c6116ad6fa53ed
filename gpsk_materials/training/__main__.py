"""``python -m gpsk_materials.training`` (also what torchrun launches)."""

import sys

from gpsk_materials.training.cli import main

sys.exit(main())
