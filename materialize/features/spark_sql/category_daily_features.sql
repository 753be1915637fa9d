-- Spark SQL twin of ../sql/category_daily_features.sql: daily snapshots of every category
-- for days since_day..max_day. Inputs: the views `events` and `categories`
-- registered by spark_builder.py. Same columns, names and values (tests compare them).
-- Parameters: since_day (date), max_day (date), created (timestamp).
WITH days AS (
    SELECT explode(sequence(CAST(:since_day AS DATE), CAST(:max_day AS DATE))) AS snap_day
),
daily AS (
    SELECT category_id, day, count(*) AS events, count_if(event_type = 3) AS purchases
    FROM events
    WHERE day >= date_sub(CAST(:since_day AS DATE), 30)
    GROUP BY category_id, day
),
windowed AS (
    SELECT c.category_id, d.snap_day,
           coalesce(sum(x.events) FILTER (WHERE x.day = d.snap_day), 0) AS event_count_1d,
           coalesce(sum(x.events) FILTER (WHERE x.day > date_sub(d.snap_day, 7)), 0) AS event_count_7d,
           coalesce(sum(x.events), 0) AS event_count_30d,
           coalesce(sum(x.purchases) FILTER (WHERE x.day > date_sub(d.snap_day, 7)), 0) AS purchase_count_7d
    FROM days d CROSS JOIN categories c
    LEFT JOIN daily x ON x.category_id = c.category_id AND x.day > date_sub(d.snap_day, 30) AND x.day <= d.snap_day
    GROUP BY c.category_id, d.snap_day
)
SELECT CAST(category_id AS INT) AS category_id,
       CAST(date_add(snap_day, 1) AS TIMESTAMP) AS event_timestamp,
       CAST(:created AS TIMESTAMP) AS created_timestamp,
       CAST(event_count_1d AS INT) AS category_event_count_1d,
       CAST(event_count_7d AS INT) AS category_event_count_7d,
       CAST(event_count_30d AS INT) AS category_event_count_30d,
       CAST(purchase_count_7d AS INT) AS category_purchase_count_7d,
       coalesce(event_count_7d / nullif(sum(event_count_7d) OVER (PARTITION BY snap_day), 0), 0D) AS category_event_share_7d,
       (event_count_7d / 7.0D) / nullif(event_count_30d / 30.0D, 0D) AS category_trend_7d_vs_30d
FROM windowed
