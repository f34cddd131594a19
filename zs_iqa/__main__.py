import sys

from zs_iqa.cli import main

sys.exit(main())
