"""`python -m surg3d_nodes.cli` is the `surg3d` command."""

import sys

from surg3d_nodes.cli import main

sys.exit(main())
