-- Mean text embedding of each user's last K events' items as of the end of each active
-- day, for the users in affected_users from their embedding_from day on. Bounded: each
-- (user, active day) fetches its K newest events through the events primary key
-- (user_id, event_timestamp, item_id, event_type), read backwards, so the work is
-- (active days x K) index entries, never a join of a user's days with the user's whole
-- history. Events whose item text has no embedding yet are left out of the mean (a day
-- with none of them has no row).
-- item_vectors (temp table: item_id, embedding) is filled by the runner, which also fills
-- in the mean aggregate: pgvector avg() where the extension exists, a per-dimension
-- average otherwise.
-- Parameters: recent_events (int), created (timestamptz).
INSERT INTO interest.user_interest_embedding
WITH active_days AS (
    SELECT DISTINCT e.user_id, (e.event_timestamp AT TIME ZONE 'UTC')::date AS day
    FROM affected_users a
    JOIN interest.events e
      ON e.user_id = a.user_id AND e.event_timestamp >= a.embedding_from::timestamp AT TIME ZONE 'UTC'
    WHERE a.embedding_from IS NOT NULL
),
recent AS (
    SELECT a.user_id, a.day, v.embedding
    FROM active_days a
    CROSS JOIN LATERAL (
        SELECT e.item_id
        FROM interest.events e
        WHERE e.user_id = a.user_id
          AND e.event_timestamp < (a.day + 1)::timestamp AT TIME ZONE 'UTC'
        ORDER BY e.event_timestamp DESC, e.item_id DESC, e.event_type DESC
        LIMIT %(recent_events)s
    ) last_events
    JOIN item_vectors v ON v.item_id = last_events.item_id
)
SELECT user_id, (day + 1)::timestamp AT TIME ZONE 'UTC', %(created)s, embedding
FROM (MEAN_EMBEDDING) m;
