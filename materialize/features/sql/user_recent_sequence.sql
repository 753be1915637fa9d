-- The last N events of each user as of each distinct event time, for the users in
-- affected_users from their sequence_from day (or sequence_from_time, where set) on. Events at the same instant are ordered
-- by (item_id, event_type); one row per (user, timestamp) holds all of them.
-- Only the events since sequence_from are read, plus the N events before it (fetched
-- backwards through the events primary key), which the first new rows need.
-- Parameters: preceding (int, N - 1), created (timestamptz).
INSERT INTO interest.user_recent_sequence
WITH scope AS (
    SELECT user_id, coalesce(sequence_from_time, sequence_from::timestamp AT TIME ZONE 'UTC') AS from_ts
    FROM affected_users WHERE sequence_from IS NOT NULL
),
ev AS (
    SELECT s.user_id, s.from_ts, e.event_timestamp, e.item_id, e.event_type
    FROM scope s JOIN interest.events e ON e.user_id = s.user_id AND e.event_timestamp >= s.from_ts
    UNION ALL
    SELECT s.user_id, s.from_ts, before.event_timestamp, before.item_id, before.event_type
    FROM scope s
    CROSS JOIN LATERAL (
        SELECT e.event_timestamp, e.item_id, e.event_type
        FROM interest.events e
        WHERE e.user_id = s.user_id AND e.event_timestamp < s.from_ts
        ORDER BY e.event_timestamp DESC, e.item_id DESC, e.event_type DESC
        LIMIT %(preceding)s + 1
    ) before
)
SELECT user_id, event_timestamp, %(created)s, recent_item_ids, recent_category_ids,
       recent_event_types, recent_gap_seconds, sequence_length
FROM (
    SELECT e.user_id, e.event_timestamp, e.from_ts,
           array_agg(e.item_id) OVER w AS recent_item_ids,
           array_agg(i.category_id) OVER w AS recent_category_ids,
           array_agg(e.event_type::int) OVER w AS recent_event_types,
           array_agg(e.gap_seconds) OVER w AS recent_gap_seconds,
           count(*) OVER w AS sequence_length,
           row_number() OVER (PARTITION BY e.user_id, e.event_timestamp
                              ORDER BY e.item_id DESC, e.event_type DESC) AS newest_at_instant
    FROM (
        SELECT ev.*,
               coalesce(extract(epoch FROM ev.event_timestamp - lag(ev.event_timestamp) OVER o), 0)::real
                   AS gap_seconds
        FROM ev
        WINDOW o AS (PARTITION BY ev.user_id ORDER BY ev.event_timestamp, ev.item_id, ev.event_type)
    ) e
    JOIN interest.items i USING (item_id)
    WINDOW w AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type
                 ROWS BETWEEN %(preceding)s PRECEDING AND CURRENT ROW)
) s
WHERE newest_at_instant = 1 AND event_timestamp >= from_ts;
