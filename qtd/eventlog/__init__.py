"""The event log on disk, below :mod:`qtd.store`: the ``events`` row of an event and its
batched INSERT (:mod:`~qtd.eventlog.rows`), the checksum and hash chain that seal each row
(:mod:`~qtd.eventlog.integrity`), and the writer process that commits batches of sealed rows
off the caller's interpreter (:mod:`~qtd.eventlog.writer`, ``python -m qtd.eventlog``).

It imports only the standard library, msgspec and :mod:`qtd.events`, so the writer process
starts in a fraction of the time :mod:`qtd.store` (asyncio, aiosqlite) would take to import.
"""
