-- The last N events of each user as of each distinct event time, for the users in
-- affected_users. Events at the same instant are ordered by (item_id, event_type); one row
-- per (user, timestamp) holds all of them.
-- Parameters: sequence_length (int), created (timestamptz).
INSERT INTO interest.user_recent_sequence
SELECT user_id, event_timestamp, %(created)s, recent_item_ids, recent_category_ids,
       recent_event_types, recent_gap_seconds, sequence_length
FROM (
    SELECT e.user_id, e.event_timestamp,
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
        FROM interest.events ev JOIN affected_users USING (user_id)
        WINDOW o AS (PARTITION BY ev.user_id ORDER BY ev.event_timestamp, ev.item_id, ev.event_type)
    ) e
    JOIN interest.items i USING (item_id)
    WINDOW w AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type
                 ROWS BETWEEN %(preceding)s PRECEDING AND CURRENT ROW)
) s
WHERE newest_at_instant = 1;
