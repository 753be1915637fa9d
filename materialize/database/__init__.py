"""PostgreSQL itself: the embedded or external server, connections, pgvector, and the
project's tables (``schema.sql``). Every other sub-package reaches the database through it.
"""
