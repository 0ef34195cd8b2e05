import sys

from hgan.data.cli import main

sys.exit(main())
