"""``python -m zs_iqa``: an alias of ``python -m iqa_core`` (the one command line), e.g.

    python -m zs_iqa score REF DIST --backbone dinov1 --comparator l2 --weights dino_vitb16.pth
"""

import sys

from iqa_core.cli import main

sys.exit(main())
