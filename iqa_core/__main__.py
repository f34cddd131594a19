import sys

from iqa_core.cli import main

sys.exit(main())
