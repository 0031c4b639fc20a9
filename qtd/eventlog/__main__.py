"""``python -m qtd.eventlog PATH LAST_SEQ HEAD_HEX``: the store's writer process
(:mod:`qtd.eventlog.writer`), started by :class:`~qtd.store.BulkAppender`."""

import sys

from qtd.eventlog.writer import main

sys.exit(main())
