import sys

from vitlab_edge.cli import main

sys.exit(main())
