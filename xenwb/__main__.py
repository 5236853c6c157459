import sys

from xenwb.cli import main

sys.exit(main())
