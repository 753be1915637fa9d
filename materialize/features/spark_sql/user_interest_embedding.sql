-- Spark SQL twin of ../sql/user_interest_embedding.sql: the mean text embedding of each
-- user's last K events' items as of the end of each active day since since_day. Events
-- whose item has no text vector are left out of the mean (a day with none has no row).
-- Inputs: the views `events`, `item_vectors` (item_id, embedding) and `sequence_carry`
-- (each user's last stored recent-sequence row before since_day, whose items precede the
-- new ones; empty in a full build), registered by spark_builder.py. PRECEDING_ROWS (K - 1,
-- an integer, K at most the sequence length) is put in by the runner.
-- Parameters: since_day (date), created (timestamp).
WITH last_events AS (
    SELECT user_id, day,
           collect_list(item_id) OVER (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type
                                       ROWS BETWEEN PRECEDING_ROWS PRECEDING AND CURRENT ROW) AS item_ids,
           row_number() OVER (PARTITION BY user_id, day ORDER BY event_timestamp DESC, item_id DESC, event_type DESC)
               AS newest_of_day
    FROM events
    WHERE day >= CAST(:since_day AS DATE)
),
carried AS (
    SELECT l.user_id, l.day,
           CASE WHEN k.user_id IS NULL THEN l.item_ids ELSE concat(k.recent_item_ids, l.item_ids) END AS item_ids
    FROM last_events l LEFT JOIN sequence_carry k ON k.user_id = l.user_id
    WHERE l.newest_of_day = 1
),
recent AS (
    SELECT r.user_id, r.day, v.embedding
    FROM (SELECT user_id, day,
                 explode(slice(item_ids, greatest(size(item_ids) - PRECEDING_ROWS, 1), PRECEDING_ROWS + 1)) AS item_id
          FROM carried) r
    JOIN item_vectors v ON v.item_id = r.item_id
),
sums AS (
    SELECT user_id, day, count(*) AS n,
           aggregate(collect_list(embedding), CAST(array() AS ARRAY<DOUBLE>),
                     (acc, e) -> CASE WHEN size(acc) = 0 THEN transform(e, x -> CAST(x AS DOUBLE))
                                      ELSE zip_with(acc, e, (a, b) -> a + b) END) AS total
    FROM recent GROUP BY user_id, day
)
SELECT user_id, CAST(date_add(day, 1) AS TIMESTAMP) AS event_timestamp, CAST(:created AS TIMESTAMP) AS created_timestamp,
       transform(total, x -> CAST(x / n AS FLOAT)) AS interest_embedding
FROM sums
