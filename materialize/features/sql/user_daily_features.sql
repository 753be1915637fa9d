-- Daily user snapshots for the users in temp table affected_users, from each user's
-- daily_from day on (a full build: from -infinity).
-- A snapshot for day D (stamped D+1 00:00 UTC) covers events up to the end of D.
-- Snapshot days are the active days plus the days an active day leaves the 1/7/30-day
-- windows, so every day's values are exact without a row per user per calendar day.
-- Only the events of the 30 days before daily_from and later are read (plus the one event
-- before them, for the session start of the first); what the new snapshots carry over
-- from older days (the previous snapshot's "dominant category changed" and interest-shift
-- start, its lifetime event counts per category, the last event time) comes from the
-- user's last stored snapshot before daily_from and one index lookup. Snapshot days
-- include every active day, so the lifetime counts are that snapshot's plus the running
-- sum of each snapshot day's own events from daily_from on.
-- Parameters: max_day (date), created (timestamptz), session_gap (interval), n_categories (int).
INSERT INTO interest.user_daily_features
WITH scope AS (
    SELECT user_id, daily_from AS from_day,
           (daily_from - 30)::timestamp AT TIME ZONE 'UTC' AS read_from
    FROM affected_users WHERE daily_from IS NOT NULL
),
ev AS (
    SELECT e.user_id, (e.event_timestamp AT TIME ZONE 'UTC')::date AS day, e.event_timestamp,
           e.event_type, e.price, i.category_id, e.session_id,
           lag(e.event_timestamp) OVER w AS previous_timestamp,
           lag(e.session_id) OVER w AS previous_session_id
    FROM (
        SELECT e.user_id, e.item_id, e.event_type, e.event_timestamp, e.price, e.session_id
        FROM scope s JOIN interest.events e ON e.user_id = s.user_id AND e.event_timestamp >= s.read_from
        UNION ALL
        SELECT s.user_id, before.item_id, before.event_type, before.event_timestamp, before.price, before.session_id
        FROM scope s
        CROSS JOIN LATERAL (
            SELECT e.item_id, e.event_type, e.event_timestamp, e.price, e.session_id
            FROM interest.events e
            WHERE e.user_id = s.user_id AND e.event_timestamp < s.read_from
            ORDER BY e.event_timestamp DESC, e.item_id DESC, e.event_type DESC
            LIMIT 1
        ) before
    ) e
    JOIN interest.items i USING (item_id)
    WINDOW w AS (PARTITION BY e.user_id ORDER BY e.event_timestamp, e.item_id, e.event_type)
),
daily AS (
    SELECT user_id, day,
           count(*) FILTER (WHERE event_type = 0) AS views,
           count(*) FILTER (WHERE event_type = 1) AS clicks,
           count(*) FILTER (WHERE event_type = 2) AS carts,
           count(*) FILTER (WHERE event_type = 3) AS purchases,
           coalesce(sum(price) FILTER (WHERE event_type = 3), 0)::float8 AS spend,
           count(*) FILTER (
               WHERE previous_timestamp IS NULL
                  OR session_id IS DISTINCT FROM previous_session_id
                  OR event_timestamp - previous_timestamp > %(session_gap)s
           ) AS session_starts,
           max(event_timestamp) AS last_event_at
    FROM ev GROUP BY user_id, day
),
daily_category AS (
    SELECT user_id, day, category_id, count(*) AS events FROM ev GROUP BY user_id, day, category_id
),
snapshots AS (
    SELECT DISTINCT d.user_id, d.day + o.offset_days AS snap_day
    FROM daily d JOIN scope USING (user_id) CROSS JOIN (VALUES (0), (1), (7), (30)) AS o(offset_days)
    WHERE d.day + o.offset_days <= %(max_day)s AND d.day + o.offset_days >= scope.from_day
),
windowed AS (
    SELECT s.user_id, s.snap_day,
           coalesce(sum(d.views) FILTER (WHERE d.day = s.snap_day), 0) AS view_count_1d,
           coalesce(sum(d.clicks) FILTER (WHERE d.day = s.snap_day), 0) AS click_count_1d,
           coalesce(sum(d.carts) FILTER (WHERE d.day = s.snap_day), 0) AS cart_count_1d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day = s.snap_day), 0) AS purchase_count_1d,
           coalesce(sum(d.views) FILTER (WHERE d.day > s.snap_day - 7), 0) AS view_count_7d,
           coalesce(sum(d.clicks) FILTER (WHERE d.day > s.snap_day - 7), 0) AS click_count_7d,
           coalesce(sum(d.carts) FILTER (WHERE d.day > s.snap_day - 7), 0) AS cart_count_7d,
           coalesce(sum(d.purchases) FILTER (WHERE d.day > s.snap_day - 7), 0) AS purchase_count_7d,
           coalesce(sum(d.views), 0) AS view_count_30d,
           coalesce(sum(d.clicks), 0) AS click_count_30d,
           coalesce(sum(d.carts), 0) AS cart_count_30d,
           coalesce(sum(d.purchases), 0) AS purchase_count_30d,
           coalesce(sum(d.spend) FILTER (WHERE d.day > s.snap_day - 7), 0) AS spend_7d,
           coalesce(sum(d.spend), 0) AS spend_30d,
           coalesce(sum(d.session_starts) FILTER (WHERE d.day > s.snap_day - 7), 0) AS session_count_7d,
           coalesce(sum(d.session_starts), 0) AS session_count_30d,
           max(d.last_event_at) AS last_event_in_30d
    FROM snapshots s
    LEFT JOIN daily d ON d.user_id = s.user_id AND d.day > s.snap_day - 30 AND d.day <= s.snap_day
    GROUP BY s.user_id, s.snap_day
),
category_window AS (
    SELECT s.user_id, s.snap_day, c.category_id,
           coalesce(sum(dc.events) FILTER (WHERE dc.day = s.snap_day), 0) AS events_1d,
           coalesce(sum(dc.events) FILTER (WHERE dc.day > s.snap_day - 7), 0) AS events_7d,
           coalesce(sum(dc.events), 0) AS events_30d
    FROM snapshots s
    CROSS JOIN generate_series(1, %(n_categories)s) AS c(category_id)
    LEFT JOIN daily_category dc
           ON dc.user_id = s.user_id AND dc.category_id = c.category_id
          AND dc.day > s.snap_day - 30 AND dc.day <= s.snap_day
    GROUP BY s.user_id, s.snap_day, c.category_id
),
category_share AS (
    SELECT user_id, snap_day, category_id, events_7d, events_30d,
           events_7d::float8 / nullif(sum(events_7d) OVER p, 0) AS p7,
           events_30d::float8 / nullif(sum(events_30d) OVER p, 0) AS p30,
           sum(events_1d) OVER (PARTITION BY user_id, category_id ORDER BY snap_day) AS events_since_from
    FROM category_window
    WINDOW p AS (PARTITION BY user_id, snap_day)
),
category_stats AS (
    SELECT user_id, snap_day,
           array_agg(coalesce(p7, 0)::real ORDER BY category_id) AS category_share_7d,
           array_agg(coalesce(p30, 0)::real ORDER BY category_id) AS category_share_30d,
           array_agg(events_since_from::int ORDER BY category_id) AS events_since_from,
           (array_agg(category_id ORDER BY events_7d DESC, category_id) FILTER (WHERE events_7d > 0))[1]
               AS dominant_category_7d,
           (array_agg(category_id ORDER BY events_30d DESC, category_id) FILTER (WHERE events_30d > 0))[1]
               AS dominant_category_30d,
           -sum(CASE WHEN p30 > 0 THEN p30 * ln(p30) END) AS category_entropy_30d,
           CASE WHEN bool_or(events_7d > 0) THEN greatest(0, sum(
               CASE WHEN p7 > 0 THEN 0.5 * p7 * ln(2 * p7 / (p7 + p30)) ELSE 0 END
             + CASE WHEN p30 > 0 THEN 0.5 * p30 * ln(2 * p30 / (coalesce(p7, 0) + p30)) ELSE 0 END))
           END AS category_divergence_7d_30d
    FROM category_share
    GROUP BY user_id, snap_day
),
combined AS (
    SELECT w.*, c.category_share_7d, c.category_share_30d, c.events_since_from, c.dominant_category_7d,
           c.dominant_category_30d, c.category_entropy_30d, c.category_divergence_7d_30d,
           coalesce(c.dominant_category_7d <> c.dominant_category_30d, false) AS dominant_category_changed
    FROM windowed w JOIN category_stats c USING (user_id, snap_day)
),
previous AS (
    SELECT s.user_id, p.dominant_category_changed AS previous_changed, p.category_events_lifetime AS previous_lifetime,
           p.snap_day - p.days_since_interest_shift::int AS previous_shift_day,
           l.last_event_at AS previous_last_event_at
    FROM scope s
    LEFT JOIN LATERAL (
        SELECT f.dominant_category_changed, f.days_since_interest_shift, f.category_events_lifetime,
               (f.event_timestamp AT TIME ZONE 'UTC')::date - 1 AS snap_day
        FROM interest.user_daily_features f
        WHERE f.user_id = s.user_id AND f.event_timestamp <= s.from_day::timestamp AT TIME ZONE 'UTC'
        ORDER BY f.event_timestamp DESC
        LIMIT 1
    ) p ON true
    LEFT JOIN LATERAL (
        SELECT max(e.event_timestamp) AS last_event_at
        FROM interest.events e
        WHERE e.user_id = s.user_id AND e.event_timestamp < s.from_day::timestamp AT TIME ZONE 'UTC'
    ) l ON true
),
shifts AS (
    SELECT c.*, p.previous_shift_day, p.previous_lifetime,
           c.dominant_category_changed
               AND NOT coalesce(lag(c.dominant_category_changed) OVER u, p.previous_changed, false) AS shift_starts,
           greatest(max(c.last_event_in_30d) OVER u, p.previous_last_event_at) AS last_event_at
    FROM combined c JOIN previous p USING (user_id)
    WINDOW u AS (PARTITION BY c.user_id ORDER BY c.snap_day)
)
SELECT user_id,
       (snap_day + 1)::timestamp AT TIME ZONE 'UTC' AS event_timestamp,
       %(created)s AS created_timestamp,
       view_count_1d, click_count_1d, cart_count_1d, purchase_count_1d,
       view_count_7d, click_count_7d, cart_count_7d, purchase_count_7d,
       view_count_30d, click_count_30d, cart_count_30d, purchase_count_30d,
       spend_7d, spend_30d, session_count_7d, session_count_30d,
       extract(epoch FROM ((snap_day + 1)::timestamp AT TIME ZONE 'UTC') - last_event_at) / 86400.0
           AS days_since_last_event,
       category_share_7d, category_share_30d, dominant_category_7d, dominant_category_30d,
       category_entropy_30d, category_divergence_7d_30d, dominant_category_changed,
       (snap_day - greatest(max(CASE WHEN shift_starts THEN snap_day END)
                                OVER (PARTITION BY user_id ORDER BY snap_day), previous_shift_day))::float8
           AS days_since_interest_shift,
       ARRAY(SELECT coalesce(n, 0) + coalesce(before, 0)
             FROM unnest(events_since_from, previous_lifetime) WITH ORDINALITY AS t(n, before, position)
             ORDER BY position) AS category_events_lifetime
FROM shifts;
