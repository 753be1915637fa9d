-- Spark SQL twin of ../sql/user_daily_features.sql: daily snapshots of every user with
-- events, for days since_day..max_day. A snapshot for day D (stamped D+1 00:00 UTC) covers
-- events up to the end of D; snapshot days are the active days plus the days an active day
-- leaves the 1/7/30-day windows. Inputs: the view `events` (the 30 days before since_day
-- on, with the item's current category_id) and `user_daily_carry` (what each user's last
-- stored snapshot before since_day carries over: its dominant_category_changed, the day of
-- its last shift start, its lifetime event counts per category and its last event time;
-- empty in a full build), registered by
-- spark_builder.py. Parameters: since_day (date), max_day (date), created (timestamp),
-- session_gap_micros (bigint), n_categories (int).
WITH ev AS (
    SELECT user_id, day, event_timestamp, event_type, price, category_id, session_id,
           lag(event_timestamp) OVER w AS previous_timestamp,
           lag(session_id) OVER w AS previous_session_id
    FROM events
    WINDOW w AS (PARTITION BY user_id ORDER BY event_timestamp, item_id, event_type)
),
daily AS (
    SELECT user_id, day,
           count_if(event_type = 0) AS views,
           count_if(event_type = 1) AS clicks,
           count_if(event_type = 2) AS carts,
           count_if(event_type = 3) AS purchases,
           CAST(coalesce(sum(price) FILTER (WHERE event_type = 3), 0) AS DOUBLE) AS spend,
           count_if(previous_timestamp IS NULL
                    OR NOT (session_id <=> previous_session_id)
                    OR unix_micros(event_timestamp) - unix_micros(previous_timestamp) > :session_gap_micros) AS session_starts,
           max(event_timestamp) AS last_event_at
    FROM ev GROUP BY user_id, day
),
daily_category AS (
    SELECT user_id, day, category_id, count(*) AS events FROM ev GROUP BY user_id, day, category_id
),
snapshots AS (
    SELECT DISTINCT d.user_id, date_add(d.day, o.offset_days) AS snap_day
    FROM daily d CROSS JOIN (VALUES (0), (1), (7), (30)) AS o(offset_days)
    WHERE date_add(d.day, o.offset_days) BETWEEN CAST(:since_day AS DATE) AND CAST(:max_day AS DATE)
),
windowed AS (
    SELECT s.user_id, s.snap_day,
           coalesce(sum(d.views) FILTER (WHERE d.day = s.snap_day), 0) AS view_count_1d,
           coalesce(sum(d.clicks) FILTER (WHERE d.day = s.snap_day), 0) AS click_count_1d,
           coalesce(sum(d.carts) FILTER (WHERE d.day = s.snap_day), 0) AS cart_count_1d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day = s.snap_day), 0) AS purchase_count_1d,
           coalesce(sum(d.views) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS view_count_7d,
           coalesce(sum(d.clicks) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS click_count_7d,
           coalesce(sum(d.carts) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS cart_count_7d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS purchase_count_7d,
           coalesce(sum(d.views), 0) AS view_count_30d,
           coalesce(sum(d.clicks), 0) AS click_count_30d,
           coalesce(sum(d.carts), 0) AS cart_count_30d,
           coalesce(sum(d.purchases), 0) AS purchase_count_30d,
           coalesce(sum(d.spend) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0D) AS spend_7d,
           coalesce(sum(d.spend), 0D) AS spend_30d,
           coalesce(sum(d.session_starts) FILTER (WHERE d.day > date_sub(s.snap_day, 7)), 0) AS session_count_7d,
           coalesce(sum(d.session_starts), 0) AS session_count_30d,
           max(d.last_event_at) AS last_event_in_30d
    FROM snapshots s
    LEFT JOIN daily d ON d.user_id = s.user_id AND d.day > date_sub(s.snap_day, 30) AND d.day <= s.snap_day
    GROUP BY s.user_id, s.snap_day
),
category_window AS (
    SELECT s.user_id, s.snap_day, c.category_id,
           coalesce(sum(dc.events) FILTER (WHERE dc.day = s.snap_day), 0) AS events_1d,
           coalesce(sum(dc.events) FILTER (WHERE dc.day > date_sub(s.snap_day, 7)), 0) AS events_7d,
           coalesce(sum(dc.events), 0) AS events_30d
    FROM snapshots s
    CROSS JOIN (SELECT explode(sequence(1, CAST(:n_categories AS INT))) AS category_id) c
    LEFT JOIN daily_category dc
           ON dc.user_id = s.user_id AND dc.category_id = c.category_id
          AND dc.day > date_sub(s.snap_day, 30) AND dc.day <= s.snap_day
    GROUP BY s.user_id, s.snap_day, c.category_id
),
category_share AS (
    SELECT user_id, snap_day, category_id, events_7d, events_30d,
           events_7d / nullif(sum(events_7d) OVER p, 0) AS p7,
           events_30d / nullif(sum(events_30d) OVER p, 0) AS p30,
           sum(events_1d) OVER (PARTITION BY user_id, category_id ORDER BY snap_day) AS events_since_from
    FROM category_window
    WINDOW p AS (PARTITION BY user_id, snap_day)
),
category_stats AS (
    SELECT user_id, snap_day,
           transform(array_sort(collect_list(struct(category_id, CAST(coalesce(p7, 0D) AS FLOAT) AS share))), x -> x.share)
               AS category_share_7d,
           transform(array_sort(collect_list(struct(category_id, CAST(coalesce(p30, 0D) AS FLOAT) AS share))), x -> x.share)
               AS category_share_30d,
           transform(array_sort(collect_list(struct(category_id, CAST(events_since_from AS INT) AS events))), x -> x.events)
               AS events_since_from,
           min_by(category_id, struct(-events_7d, category_id)) FILTER (WHERE events_7d > 0) AS dominant_category_7d,
           min_by(category_id, struct(-events_30d, category_id)) FILTER (WHERE events_30d > 0) AS dominant_category_30d,
           -sum(CASE WHEN p30 > 0 THEN p30 * ln(p30) END) AS category_entropy_30d,
           CASE WHEN bool_or(events_7d > 0) THEN greatest(0D, sum(
               CASE WHEN p7 > 0 THEN 0.5D * p7 * ln(2 * p7 / (p7 + p30)) ELSE 0D END
             + CASE WHEN p30 > 0 THEN 0.5D * p30 * ln(2 * p30 / (coalesce(p7, 0D) + p30)) ELSE 0D END))
           END AS category_divergence_7d_30d
    FROM category_share
    GROUP BY user_id, snap_day
),
combined AS (
    SELECT w.*, c.category_share_7d, c.category_share_30d, c.events_since_from, c.dominant_category_7d,
           c.dominant_category_30d, c.category_entropy_30d, c.category_divergence_7d_30d,
           coalesce(c.dominant_category_7d <> c.dominant_category_30d, false) AS dominant_category_changed
    FROM windowed w JOIN category_stats c ON c.user_id = w.user_id AND c.snap_day = w.snap_day
),
shifts AS (
    SELECT c.*,
           c.dominant_category_changed
               AND NOT coalesce(lag(c.dominant_category_changed) OVER u, k.previous_changed, false) AS shift_starts,
           greatest(max(c.last_event_in_30d) OVER u, k.last_event_at) AS last_event_at,
           k.last_shift_day AS carried_shift_day, k.lifetime AS carried_lifetime
    FROM combined c LEFT JOIN user_daily_carry k ON k.user_id = c.user_id
    WINDOW u AS (PARTITION BY c.user_id ORDER BY c.snap_day)
)
SELECT user_id,
       CAST(date_add(snap_day, 1) AS TIMESTAMP) AS event_timestamp,
       CAST(:created AS TIMESTAMP) AS created_timestamp,
       CAST(view_count_1d AS INT) AS view_count_1d, CAST(click_count_1d AS INT) AS click_count_1d,
       CAST(cart_count_1d AS INT) AS cart_count_1d, CAST(purchase_count_1d AS INT) AS purchase_count_1d,
       CAST(view_count_7d AS INT) AS view_count_7d, CAST(click_count_7d AS INT) AS click_count_7d,
       CAST(cart_count_7d AS INT) AS cart_count_7d, CAST(purchase_count_7d AS INT) AS purchase_count_7d,
       CAST(view_count_30d AS INT) AS view_count_30d, CAST(click_count_30d AS INT) AS click_count_30d,
       CAST(cart_count_30d AS INT) AS cart_count_30d, CAST(purchase_count_30d AS INT) AS purchase_count_30d,
       spend_7d, spend_30d,
       CAST(session_count_7d AS INT) AS session_count_7d, CAST(session_count_30d AS INT) AS session_count_30d,
       (unix_micros(CAST(date_add(snap_day, 1) AS TIMESTAMP)) - unix_micros(last_event_at)) / 86400000000.0D
           AS days_since_last_event,
       category_share_7d, category_share_30d,
       CAST(dominant_category_7d AS INT) AS dominant_category_7d, CAST(dominant_category_30d AS INT) AS dominant_category_30d,
       category_entropy_30d, category_divergence_7d_30d, dominant_category_changed,
       CAST(datediff(snap_day, coalesce(max(CASE WHEN shift_starts THEN snap_day END) OVER (PARTITION BY user_id ORDER BY snap_day),
                                        carried_shift_day))
            AS DOUBLE) AS days_since_interest_shift,
       CASE WHEN carried_lifetime IS NULL THEN events_since_from
            ELSE transform(events_since_from, (n, i) -> n + coalesce(get(carried_lifetime, i), 0)) END AS category_events_lifetime
FROM shifts
