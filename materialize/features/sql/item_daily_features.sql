-- Daily item snapshots for the items in affected_items from each item's from_day on
-- (same snapshot-day rule as users); only the events of the 30 days before from_day and
-- later are read, through the index on events (item_id, event_timestamp).
-- Parameters: max_day (date), created (timestamptz).
INSERT INTO interest.item_daily_features
WITH ev AS (
    SELECT e.item_id, (e.event_timestamp AT TIME ZONE 'UTC')::date AS day, e.event_type, e.user_id
    FROM affected_items a
    JOIN interest.events e
      ON e.item_id = a.item_id AND e.event_timestamp >= (a.from_day - 30)::timestamp AT TIME ZONE 'UTC'
),
daily AS (
    SELECT item_id, day, count(*) AS events,
           count(*) FILTER (WHERE event_type = 0) AS views,
           count(*) FILTER (WHERE event_type = 3) AS purchases
    FROM ev GROUP BY item_id, day
),
daily_users AS (SELECT DISTINCT item_id, day, user_id FROM ev),
snapshots AS (
    SELECT DISTINCT d.item_id, d.day + o.offset_days AS snap_day
    FROM daily d JOIN affected_items a USING (item_id) CROSS JOIN (VALUES (0), (1), (7), (30)) AS o(offset_days)
    WHERE d.day + o.offset_days <= %(max_day)s AND d.day + o.offset_days >= a.from_day
),
windowed AS (
    SELECT s.item_id, s.snap_day,
           coalesce(sum(d.views) FILTER (WHERE d.day = s.snap_day), 0) AS view_count_1d,
           coalesce(sum(d.views) FILTER (WHERE d.day > s.snap_day - 7), 0) AS view_count_7d,
           coalesce(sum(d.views), 0) AS view_count_30d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day > s.snap_day - 7), 0) AS purchase_count_7d,
           coalesce(sum(d.purchases), 0) AS purchase_count_30d,
           coalesce(sum(d.events) FILTER (WHERE d.day = s.snap_day), 0) AS event_count_1d,
           coalesce(sum(d.events) FILTER (WHERE d.day > s.snap_day - 7), 0) AS event_count_7d
    FROM snapshots s
    LEFT JOIN daily d ON d.item_id = s.item_id AND d.day > s.snap_day - 30 AND d.day <= s.snap_day
    GROUP BY s.item_id, s.snap_day
),
users_7d AS (
    SELECT s.item_id, s.snap_day, count(DISTINCT u.user_id) AS unique_users_7d
    FROM snapshots s
    LEFT JOIN daily_users u ON u.item_id = s.item_id AND u.day > s.snap_day - 7 AND u.day <= s.snap_day
    GROUP BY s.item_id, s.snap_day
)
SELECT w.item_id,
       (w.snap_day + 1)::timestamp AT TIME ZONE 'UTC',
       %(created)s,
       w.view_count_1d, w.view_count_7d, w.view_count_30d, w.purchase_count_7d, w.purchase_count_30d,
       w.event_count_7d, u.unique_users_7d,
       w.purchase_count_7d::float8 / nullif(w.view_count_7d, 0),
       w.purchase_count_30d::float8 / nullif(w.view_count_30d, 0),
       w.event_count_1d::float8 / nullif(w.event_count_7d / 7.0, 0)
FROM windowed w JOIN users_7d u USING (item_id, snap_day);
