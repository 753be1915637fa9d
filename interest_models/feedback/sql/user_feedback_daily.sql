-- One day's user_feedback_daily snapshot (stamped at %(day_end)s) for every user with an
-- impression in the 8 days before it: the 7-day window's impressions, and their clicks and
-- purchases from events carrying the recommendation's id, stamped before the day's end (a
-- value stamped at day_end never reads a later event; interest.impression_outcomes). Users
-- whose last impression just left the window get a row of zeros, so the online store does not
-- keep their old counts.
WITH users AS (
    SELECT DISTINCT user_id FROM interest.impressions
    WHERE served_at > %(day_end)s - interval '8 days' AND served_at <= %(day_end)s
), shown AS (
    SELECT o.user_id, it.category_id, o.exposure, o.max_type
    FROM interest.impression_outcomes(%(day_end)s) o JOIN interest.items it ON it.item_id = o.item_id
), per_category AS (
    SELECT user_id, category_id, count(*) FILTER (WHERE max_type >= 1) AS clicks, sum(exposure) AS exposure
    FROM shown GROUP BY user_id, category_id
), arrays AS (
    SELECT u.user_id,
           array_agg(coalesce(p.clicks, 0)::real ORDER BY c.category_id) AS category_clicks,
           array_agg(coalesce(p.exposure, 0)::real ORDER BY c.category_id) AS category_exposure
    FROM users u CROSS JOIN interest.categories c
    LEFT JOIN per_category p ON p.user_id = u.user_id AND p.category_id = c.category_id
    GROUP BY u.user_id
), totals AS (
    SELECT user_id, count(*) AS impressions, count(*) FILTER (WHERE max_type >= 1) AS clicks,
           count(*) FILTER (WHERE max_type = 3) AS purchases, sum(exposure) AS exposure
    FROM shown GROUP BY user_id
)
INSERT INTO interest.user_feedback_daily AS f (
    user_id, event_timestamp, created_timestamp, impressions_7d, clicks_7d, purchases_7d, ctr_7d, cvr_7d,
    debiased_ctr_7d, category_clicks_7d, category_exposure_7d)
SELECT a.user_id, %(day_end)s, clock_timestamp(), coalesce(t.impressions, 0), coalesce(t.clicks, 0), coalesce(t.purchases, 0),
       t.clicks::double precision / nullif(t.impressions, 0), t.purchases::double precision / nullif(t.clicks, 0),
       t.clicks / nullif(t.exposure, 0), a.category_clicks, a.category_exposure
FROM arrays a LEFT JOIN totals t ON t.user_id = a.user_id
ON CONFLICT (user_id, event_timestamp) DO UPDATE SET
    created_timestamp = EXCLUDED.created_timestamp, impressions_7d = EXCLUDED.impressions_7d,
    clicks_7d = EXCLUDED.clicks_7d, purchases_7d = EXCLUDED.purchases_7d, ctr_7d = EXCLUDED.ctr_7d,
    cvr_7d = EXCLUDED.cvr_7d, debiased_ctr_7d = EXCLUDED.debiased_ctr_7d,
    category_clicks_7d = EXCLUDED.category_clicks_7d, category_exposure_7d = EXCLUDED.category_exposure_7d
