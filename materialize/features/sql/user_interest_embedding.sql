-- Mean text embedding of each user's last K items as of the end of each active day, for
-- the users in affected_users. The runner fills in the mean aggregate: pgvector
-- avg() where the extension exists, a per-dimension average otherwise.
-- Parameters: recent_events (int), created (timestamptz).
INSERT INTO interest.user_interest_embedding
WITH ev AS (
    SELECT e.user_id, (e.event_timestamp AT TIME ZONE 'UTC')::date AS day, e.item_id,
           row_number() OVER (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type) AS position
    FROM interest.events e JOIN affected_users USING (user_id)
),
active_days AS (SELECT user_id, day, max(position) AS last_position FROM ev GROUP BY user_id, day),
recent AS (
    SELECT a.user_id, a.day, t.embedding
    FROM active_days a
    JOIN ev ON ev.user_id = a.user_id
           AND ev.position > a.last_position - %(recent_events)s AND ev.position <= a.last_position
    JOIN interest.items i ON i.item_id = ev.item_id
    JOIN interest.text_embeddings t ON t.text_sha256 = i.text_sha256
)
SELECT user_id, (day + 1)::timestamp AT TIME ZONE 'UTC', %(created)s, embedding
FROM (MEAN_EMBEDDING) m;
