-- Daily snapshots of every category for days since_day..max_day.
-- Parameters: since_day (date), max_day (date), created (timestamptz).
INSERT INTO interest.category_daily_features
WITH days AS (
    SELECT generate_series(%(since_day)s::date, %(max_day)s::date, interval '1 day')::date AS snap_day
),
daily AS (
    SELECT i.category_id, (e.event_timestamp AT TIME ZONE 'UTC')::date AS day,
           count(*) AS events, count(*) FILTER (WHERE e.event_type = 3) AS purchases
    FROM interest.events e JOIN interest.items i USING (item_id)
    WHERE e.event_timestamp >= (%(since_day)s::date - 30)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1, 2
),
windowed AS (
    SELECT c.category_id, d.snap_day,
           coalesce(sum(x.events) FILTER (WHERE x.day = d.snap_day), 0) AS event_count_1d,
           coalesce(sum(x.events) FILTER (WHERE x.day > d.snap_day - 7), 0) AS event_count_7d,
           coalesce(sum(x.events), 0) AS event_count_30d,
           coalesce(sum(x.purchases) FILTER (WHERE x.day > d.snap_day - 7), 0) AS purchase_count_7d
    FROM days d CROSS JOIN interest.categories c
    LEFT JOIN daily x ON x.category_id = c.category_id AND x.day > d.snap_day - 30 AND x.day <= d.snap_day
    GROUP BY c.category_id, d.snap_day
)
SELECT category_id, (snap_day + 1)::timestamp AT TIME ZONE 'UTC', %(created)s,
       event_count_1d, event_count_7d, event_count_30d, purchase_count_7d,
       coalesce(event_count_7d::float8 / nullif(sum(event_count_7d) OVER (PARTITION BY snap_day), 0), 0),
       (event_count_7d / 7.0) / nullif(event_count_30d / 30.0, 0)
FROM windowed;
