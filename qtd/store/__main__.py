"""``python -m qtd.store PATH LAST_SEQ HEAD_HEX``: the store's writer process
(:mod:`qtd.store.writer`), started by :class:`~qtd.store.BulkAppender`."""

import sys

from qtd.store.writer import main

sys.exit(main())
