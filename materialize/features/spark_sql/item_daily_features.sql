-- Spark SQL twin of ../sql/item_daily_features.sql: daily snapshots of every item with
-- events, for days since_day..max_day. Snapshot days are the active days plus the days an
-- active day leaves the 1/7/30-day windows. Input: the view `events` registered by
-- spark_builder.py (the 30 days before since_day on). Parameters: since_day (date),
-- max_day (date), created (timestamp).
WITH daily AS (
    SELECT item_id, day, count(*) AS events, count_if(event_type = 0) AS views, count_if(event_type = 3) AS purchases
    FROM events GROUP BY item_id, day
),
daily_users AS (SELECT DISTINCT item_id, day, user_id FROM events),
snapshots AS (
    SELECT DISTINCT d.item_id, date_add(d.day, o.offset_days) AS snap_day
    FROM daily d CROSS JOIN (VALUES (0), (1), (7), (30)) AS o(offset_days)
    WHERE date_add(d.day, o.offset_days) BETWEEN CAST(:since_day AS DATE) AND CAST(:max_day AS DATE)
),
windowed AS (
    SELECT s.item_id, s.snap_day,
           coalesce(sum(d.views) FILTER (WHERE d.day = s.snap_day), 0) AS view_count_1d,
           coalesce(sum(d.views) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS view_count_7d,
           coalesce(sum(d.views), 0) AS view_count_30d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS purchase_count_7d,
           coalesce(sum(d.purchases), 0) AS purchase_count_30d,
           coalesce(sum(d.events) FILTER (WHERE d.day = s.snap_day), 0) AS event_count_1d,
           coalesce(sum(d.events) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS event_count_7d
    FROM snapshots s
    LEFT JOIN daily d ON d.item_id = s.item_id AND d.day > date_sub(s.snap_day, 30) AND d.day <= s.snap_day
    GROUP BY s.item_id, s.snap_day
),
users_7d AS (
    SELECT s.item_id, s.snap_day, count(DISTINCT u.user_id) AS unique_users_7d
    FROM snapshots s
    LEFT JOIN daily_users u ON u.item_id = s.item_id AND u.day > date_sub(s.snap_day, 7) AND u.day <= s.snap_day
    GROUP BY s.item_id, s.snap_day
)
SELECT w.item_id,
       CAST(date_add(w.snap_day, 1) AS TIMESTAMP) AS event_timestamp,
       CAST(:created AS TIMESTAMP) AS created_timestamp,
       CAST(w.view_count_1d AS INT) AS item_view_count_1d,
       CAST(w.view_count_7d AS INT) AS item_view_count_7d,
       CAST(w.view_count_30d AS INT) AS item_view_count_30d,
       CAST(w.purchase_count_7d AS INT) AS item_purchase_count_7d,
       CAST(w.purchase_count_30d AS INT) AS item_purchase_count_30d,
       CAST(w.event_count_7d AS INT) AS item_event_count_7d,
       CAST(u.unique_users_7d AS INT) AS item_unique_users_7d,
       w.purchase_count_7d / nullif(w.view_count_7d, 0) AS item_conversion_rate_7d,
       w.purchase_count_30d / nullif(w.view_count_30d, 0) AS item_conversion_rate_30d,
       w.event_count_1d / nullif(w.event_count_7d / 7.0D, 0D) AS item_trend_1d_vs_7d
FROM windowed w JOIN users_7d u ON u.item_id = w.item_id AND u.snap_day = w.snap_day
