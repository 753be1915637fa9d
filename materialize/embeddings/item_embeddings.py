"""Embedding item texts into Postgres, only the texts not embedded before.

``interest.text_embeddings`` caches vectors by the sha256 of the text, so an unchanged item
is never embedded again and a changed title or description is. ``interest.item_embeddings``
keeps one row per item text version, stamped with the version's ``valid_from``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

from materialize.database.tables import share_offline_writes_lock
from materialize.embeddings.item_text import item_text


@dataclass(frozen=True)
class EmbeddingReport:
    texts_embedded: int      # new or changed texts sent through the model
    texts_cached: int        # item texts whose vector already existed
    item_versions_added: int  # rows added to interest.item_embeddings
    seconds_in_model: float


def embed_new_item_texts(conn: psycopg.Connection, embedder, progress: bool = False) -> EmbeddingReport:
    """Embed every item text that has no cached vector, then refresh ``item_embeddings``.

    Args:
        conn: an open connection; commits when done.
        embedder: a ``materialize.embeddings.embedder.TextEmbedder`` (anything with ``embed`` and
            ``model_version``).
    """
    import time

    pending = conn.execute(
        """
        SELECT DISTINCT ON (i.text_sha256) i.text_sha256, i.title, i.description
        FROM interest.items i
        LEFT JOIN interest.text_embeddings t USING (text_sha256)
        WHERE t.text_sha256 IS NULL
        ORDER BY i.text_sha256
        """
    ).fetchall()
    cached = conn.execute(
        "SELECT count(*) FROM interest.items i JOIN interest.text_embeddings USING (text_sha256)"
    ).fetchone()[0]
    started = time.perf_counter()
    vectors = embedder.embed([item_text(title, description) for _, title, description in pending], progress=progress)
    seconds = time.perf_counter() - started
    share_offline_writes_lock(conn)
    with conn.cursor() as cur:
        with cur.copy("COPY interest.text_embeddings (text_sha256, model_version, embedding) FROM STDIN") as copy:
            for (sha, _, _), vector in zip(pending, vectors.astype(np.float32)):
                copy.write_row((sha, embedder.model_version, vector.tolist()))
        cur.execute(
            """
            INSERT INTO interest.item_embeddings (item_id, event_timestamp, created_timestamp, text_sha256, embedding)
            SELECT i.item_id, i.valid_from, clock_timestamp(), i.text_sha256, t.embedding
            FROM interest.items i JOIN interest.text_embeddings t USING (text_sha256)
            ON CONFLICT (item_id, event_timestamp) DO NOTHING
            """
        )
        added = cur.rowcount
    conn.commit()
    return EmbeddingReport(len(pending), cached, added, seconds)
