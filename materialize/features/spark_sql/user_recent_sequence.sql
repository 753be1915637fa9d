-- Spark SQL twin of ../sql/user_recent_sequence.sql (a full build): the last N events of
-- each user as of each distinct event time, oldest first; events at the same instant are
-- ordered by (item_id, event_type) and one row per (user, timestamp) holds all of them.
-- PRECEDING_ROWS (N - 1, an integer) is put in by the runner: Spark takes a window frame
-- bound only as a literal. Parameters: created (timestamp).
SELECT user_id, event_timestamp, CAST(:created AS TIMESTAMP) AS created_timestamp,
       recent_item_ids, recent_category_ids, recent_event_types, recent_gap_seconds,
       CAST(sequence_length AS INT) AS sequence_length
FROM (
    SELECT user_id, event_timestamp,
           collect_list(item_id) OVER w AS recent_item_ids,
           collect_list(CAST(category_id AS INT)) OVER w AS recent_category_ids,
           collect_list(CAST(event_type AS INT)) OVER w AS recent_event_types,
           collect_list(gap_seconds) OVER w AS recent_gap_seconds,
           count(*) OVER w AS sequence_length,
           row_number() OVER (PARTITION BY user_id, event_timestamp ORDER BY item_id DESC, event_type DESC)
               AS newest_at_instant
    FROM (
        SELECT user_id, item_id, event_type, event_timestamp, category_id,
               CAST(coalesce((unix_micros(event_timestamp) - unix_micros(lag(event_timestamp) OVER o)) / 1000000.0D, 0D)
                    AS FLOAT) AS gap_seconds
        FROM events
        WINDOW o AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
    ) e
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type
                 ROWS BETWEEN PRECEDING_ROWS PRECEDING AND CURRENT ROW)
) s
WHERE newest_at_instant = 1
