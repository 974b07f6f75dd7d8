"""``python -m angosd``: the `angosd` maintenance command."""

import sys

from angosd.commands.main import main

sys.exit(main())
