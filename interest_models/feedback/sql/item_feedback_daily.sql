-- One day's item_feedback_daily snapshot (stamped at %(day_end)s) for every item shown in the
-- 8 days before it, from the 7-day window (see user_feedback_daily.sql).
WITH items AS (
    SELECT DISTINCT item_id FROM interest.impressions
    WHERE served_at > %(day_end)s - interval '8 days' AND served_at <= %(day_end)s
), shown AS (
    SELECT item_id, exposure, max_type FROM interest.impression_outcomes(%(day_end)s)
), totals AS (
    SELECT item_id, count(*) AS impressions, count(*) FILTER (WHERE max_type >= 1) AS clicks,
           count(*) FILTER (WHERE max_type = 3) AS purchases, sum(exposure) AS exposure
    FROM shown GROUP BY item_id
)
INSERT INTO interest.item_feedback_daily AS f (
    item_id, event_timestamp, created_timestamp, item_impressions_7d, item_clicks_7d, item_purchases_7d,
    item_ctr_7d, item_cvr_7d, item_exposure_7d, item_debiased_ctr_7d)
SELECT s.item_id, %(day_end)s, clock_timestamp(), coalesce(t.impressions, 0), coalesce(t.clicks, 0), coalesce(t.purchases, 0),
       t.clicks::double precision / nullif(t.impressions, 0), t.purchases::double precision / nullif(t.clicks, 0),
       coalesce(t.exposure, 0), t.clicks / nullif(t.exposure, 0)
FROM items s LEFT JOIN totals t ON t.item_id = s.item_id
ON CONFLICT (item_id, event_timestamp) DO UPDATE SET
    created_timestamp = EXCLUDED.created_timestamp, item_impressions_7d = EXCLUDED.item_impressions_7d,
    item_clicks_7d = EXCLUDED.item_clicks_7d, item_purchases_7d = EXCLUDED.item_purchases_7d,
    item_ctr_7d = EXCLUDED.item_ctr_7d, item_cvr_7d = EXCLUDED.item_cvr_7d,
    item_exposure_7d = EXCLUDED.item_exposure_7d, item_debiased_ctr_7d = EXCLUDED.item_debiased_ctr_7d
