-- Spark SQL twin of ../sql/user_recent_sequence.sql: the last N events of each user as of
-- each distinct event time on days since_day on, oldest first; events at the same instant
-- are ordered by (item_id, event_type) and one row per (user, timestamp) holds all of them.
-- The view `sequence_carry` (empty in a full build) holds each user's last stored row
-- before since_day: its arrays come first and its time is the first new event's predecessor.
-- PRECEDING_ROWS (N - 1, an integer) is put in by the runner: Spark takes a window frame
-- bound only as a literal. Parameters: since_day (date), created (timestamp).
WITH ev AS (
    SELECT e.user_id, e.item_id, e.event_type, e.event_timestamp, e.category_id,
           CAST(coalesce((unix_micros(e.event_timestamp)
                          - unix_micros(coalesce(lag(e.event_timestamp) OVER o, k.event_timestamp))) / 1000000.0D, 0D)
                AS FLOAT) AS gap_seconds
    FROM events e LEFT JOIN sequence_carry k ON k.user_id = e.user_id
    WHERE e.day >= CAST(:since_day AS DATE)
    WINDOW o AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type)
),
windowed AS (
    SELECT user_id, event_timestamp,
           collect_list(item_id) OVER w AS item_ids,
           collect_list(CAST(category_id AS INT)) OVER w AS category_ids,
           collect_list(CAST(event_type AS INT)) OVER w AS event_types,
           collect_list(gap_seconds) OVER w AS gap_seconds,
           row_number() OVER (PARTITION BY user_id, event_timestamp ORDER BY item_id DESC, event_type DESC)
               AS newest_at_instant
    FROM ev
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type
                 ROWS BETWEEN PRECEDING_ROWS PRECEDING AND CURRENT ROW)
),
carried AS (
    SELECT w.user_id, w.event_timestamp,
           CASE WHEN k.user_id IS NULL THEN w.item_ids ELSE concat(k.recent_item_ids, w.item_ids) END AS item_ids,
           CASE WHEN k.user_id IS NULL THEN w.category_ids ELSE concat(k.recent_category_ids, w.category_ids) END AS category_ids,
           CASE WHEN k.user_id IS NULL THEN w.event_types ELSE concat(k.recent_event_types, w.event_types) END AS event_types,
           CASE WHEN k.user_id IS NULL THEN w.gap_seconds ELSE concat(k.recent_gap_seconds, w.gap_seconds) END AS gap_seconds,
           greatest(size(w.item_ids) + coalesce(size(k.recent_item_ids), 0) - PRECEDING_ROWS, 1) AS first
    FROM windowed w LEFT JOIN sequence_carry k ON k.user_id = w.user_id
    WHERE w.newest_at_instant = 1
)
SELECT user_id, event_timestamp, CAST(:created AS TIMESTAMP) AS created_timestamp,
       slice(item_ids, first, PRECEDING_ROWS + 1) AS recent_item_ids,
       slice(category_ids, first, PRECEDING_ROWS + 1) AS recent_category_ids,
       slice(event_types, first, PRECEDING_ROWS + 1) AS recent_event_types,
       slice(gap_seconds, first, PRECEDING_ROWS + 1) AS recent_gap_seconds,
       CAST(size(item_ids) - first + 1 AS INT) AS sequence_length
FROM carried
