-- Raw, bookkeeping and feature-source tables. Idempotent: safe to run on every start.
CREATE SCHEMA IF NOT EXISTS interest;

CREATE TABLE IF NOT EXISTS interest.ingest_runs (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL,            -- 'items' or 'events'
    source          text NOT NULL,            -- file path or generator description
    source_sha256   text NOT NULL,
    status          text NOT NULL DEFAULT 'running',
    rows_read       bigint NOT NULL DEFAULT 0,
    loaded          bigint NOT NULL DEFAULT 0, -- inserted + updated
    updated         bigint NOT NULL DEFAULT 0,
    quarantined     bigint NOT NULL DEFAULT 0,
    duplicate       bigint NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    error           text                      -- why a 'failed' run stopped
);

CREATE TABLE IF NOT EXISTS interest.quarantine (
    kind            text NOT NULL,
    source          text NOT NULL,
    source_sha256   text NOT NULL,
    line            bigint NOT NULL,          -- 1-based line of a CSV (header = 1) or row of Parquet
    field           text,                     -- first offending field, NULL for a malformed line
    reason          text NOT NULL,
    raw             jsonb NOT NULL,
    run_id          bigint NOT NULL REFERENCES interest.ingest_runs,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, source_sha256, line)
);

CREATE TABLE IF NOT EXISTS interest.categories (
    category_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- dense, from 1
    category        text NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS interest.items (
    item_id         bigint PRIMARY KEY,
    category_id     integer NOT NULL REFERENCES interest.categories,
    title           text NOT NULL,
    description     text,
    price           numeric(14, 2) CHECK (price >= 0),
    text_sha256     text NOT NULL,            -- hash of the embedded text
    valid_from      timestamptz NOT NULL,     -- first version: -infinity-like epoch; changes: load time
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Every version of every catalogue row: valid from its load time (the first version: the
-- epoch) until the next version's valid_from (valid_to; NULL for the current one). The
-- loader writes a version with each insert or change of interest.items.
CREATE TABLE IF NOT EXISTS interest.item_versions (
    item_id         bigint NOT NULL,
    valid_from      timestamptz NOT NULL,
    valid_to        timestamptz,              -- NULL: the current version
    category_id     integer NOT NULL REFERENCES interest.categories,
    title           text NOT NULL,
    description     text,
    price           numeric(14, 2),
    text_sha256     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, valid_from)
);
-- Databases made before the table existed: their current rows become first versions.
INSERT INTO interest.item_versions (item_id, valid_from, category_id, title, description, price, text_sha256, created_at)
SELECT i.item_id, i.valid_from, i.category_id, i.title, i.description, i.price, i.text_sha256, i.created_at
FROM interest.items i
WHERE NOT EXISTS (SELECT 1 FROM interest.item_versions v WHERE v.item_id = i.item_id);

CREATE TABLE IF NOT EXISTS interest.events (
    load_seq        bigint GENERATED ALWAYS AS IDENTITY,
    user_id         bigint NOT NULL,
    item_id         bigint NOT NULL,
    event_type      smallint NOT NULL CHECK (event_type BETWEEN 0 AND 3),  -- view, click, cart, purchase
    event_timestamp timestamptz NOT NULL,
    price           numeric(14, 2) CHECK (price >= 0),
    session_id      text,
    run_id          bigint NOT NULL,
    event_id        text,                     -- client-given idempotency key
    recommendation_id text,                   -- the /recommend answer the event responds to
    PRIMARY KEY (user_id, event_timestamp, item_id, event_type)
);
CREATE INDEX IF NOT EXISTS events_load_seq ON interest.events (load_seq);
CREATE INDEX IF NOT EXISTS events_item_time ON interest.events (item_id, event_timestamp);

-- Users whose online features are behind their stored events: the event intake adds a row
-- in the transaction that stores the events; the online refresher marks the rows whose
-- sequences it pushed and deletes those whose every user table it pushed (rows added
-- meanwhile stay for its next rounds).
CREATE TABLE IF NOT EXISTS interest.online_refresh_queue (
    queue_seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL,
    first_event_at  timestamptz NOT NULL,     -- the user's earliest event stored by that transaction
    sequence_pushed boolean NOT NULL DEFAULT false,  -- its recent sequences are online; the other features not yet
    queued_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Embedding cache keyed by the hash of the text: an unchanged text is never embedded again.
CREATE TABLE IF NOT EXISTS interest.text_embeddings (
    text_sha256     text PRIMARY KEY,
    model_version   text NOT NULL,
    embedding       real[] NOT NULL,          -- 384 floats, L2-normalised
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- What the feature tables were built from: 'events' (interest.events.load_seq consumed and
-- the last event day then), 'items' and 'text_embeddings' (the newest created_at consumed),
-- 'categories' (load_seq: the highest category_id, the category_share arrays' length).
CREATE TABLE IF NOT EXISTS interest.feature_watermarks (
    feature_set     text PRIMARY KEY,
    load_seq        bigint NOT NULL,
    max_event_day   date,
    changed_at      timestamptz,
    computed_at     timestamptz NOT NULL DEFAULT now()
);

-- Rows in each feature table, kept by the feature build (count(*) of a table that grows with
-- the history took 10 s at 10M events; a build knows what it deleted and inserted).
CREATE TABLE IF NOT EXISTS interest.feature_table_rows (
    table_name      text PRIMARY KEY,
    row_count       bigint NOT NULL
);

-- Feature sources read by Feast. event_timestamp: when the values became known.

CREATE TABLE IF NOT EXISTS interest.user_daily_features (
    user_id                     bigint NOT NULL,
    event_timestamp             timestamptz NOT NULL,   -- end of the snapshot day (UTC)
    created_timestamp           timestamptz NOT NULL,
    view_count_1d               integer NOT NULL,
    click_count_1d              integer NOT NULL,
    cart_count_1d               integer NOT NULL,
    purchase_count_1d           integer NOT NULL,
    view_count_7d               integer NOT NULL,
    click_count_7d              integer NOT NULL,
    cart_count_7d               integer NOT NULL,
    purchase_count_7d           integer NOT NULL,
    view_count_30d              integer NOT NULL,
    click_count_30d             integer NOT NULL,
    cart_count_30d              integer NOT NULL,
    purchase_count_30d          integer NOT NULL,
    spend_7d                    double precision NOT NULL,
    spend_30d                   double precision NOT NULL,
    session_count_7d            integer NOT NULL,
    session_count_30d           integer NOT NULL,
    days_since_last_event       double precision NOT NULL,
    category_share_7d           real[] NOT NULL,        -- index = category_id - 1
    category_share_30d          real[] NOT NULL,
    dominant_category_7d        integer,                -- NULL when no event in the window
    dominant_category_30d       integer,
    category_entropy_30d        double precision,       -- nats
    category_divergence_7d_30d  double precision,       -- Jensen-Shannon, nats, in [0, ln 2]
    dominant_category_changed   boolean NOT NULL,       -- 7d dominant differs from 30d dominant
    days_since_interest_shift   double precision,       -- since the 7d dominant last changed; NULL if never
    category_events_lifetime    integer[],              -- events per category over the whole history; index = category_id - 1
    PRIMARY KEY (user_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.user_recent_sequence (
    user_id                 bigint NOT NULL,
    event_timestamp         timestamptz NOT NULL,       -- time of the newest event in the arrays
    created_timestamp       timestamptz NOT NULL,
    recent_item_ids         bigint[] NOT NULL,          -- oldest first, newest last
    recent_category_ids     integer[] NOT NULL,
    recent_event_types      integer[] NOT NULL,         -- 0 view, 1 click, 2 cart, 3 purchase
    recent_gap_seconds      real[] NOT NULL,            -- seconds since the previous event; 0 for the first
    sequence_length         integer NOT NULL,
    PRIMARY KEY (user_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.user_interest_embedding (
    user_id                 bigint NOT NULL,
    event_timestamp         timestamptz NOT NULL,       -- end of the active day (UTC)
    created_timestamp       timestamptz NOT NULL,
    interest_embedding      real[] NOT NULL,            -- mean of recent items' text embeddings (not re-normalised: every use is a cosine)
    PRIMARY KEY (user_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.item_daily_features (
    item_id                 bigint NOT NULL,
    event_timestamp         timestamptz NOT NULL,
    created_timestamp       timestamptz NOT NULL,
    item_view_count_1d           integer NOT NULL,
    item_view_count_7d           integer NOT NULL,
    item_view_count_30d          integer NOT NULL,
    item_purchase_count_7d       integer NOT NULL,
    item_purchase_count_30d      integer NOT NULL,
    item_event_count_7d          integer NOT NULL,
    item_unique_users_7d         integer NOT NULL,
    item_conversion_rate_7d      double precision,           -- purchases / views; NULL without views
    item_conversion_rate_30d     double precision,
    item_trend_1d_vs_7d          double precision,           -- events on the day / daily mean over 7 days
    PRIMARY KEY (item_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.category_daily_features (
    category_id             integer NOT NULL,
    event_timestamp         timestamptz NOT NULL,
    created_timestamp       timestamptz NOT NULL,
    category_event_count_1d          integer NOT NULL,
    category_event_count_7d          integer NOT NULL,
    category_event_count_30d         integer NOT NULL,
    category_purchase_count_7d       integer NOT NULL,
    category_event_share_7d                double precision NOT NULL,  -- of all events in the 7 days
    category_trend_7d_vs_30d         double precision,           -- daily mean 7d / daily mean 30d
    PRIMARY KEY (category_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.item_embeddings (
    item_id                 bigint NOT NULL,
    event_timestamp         timestamptz NOT NULL,       -- valid_from of the item text version
    created_timestamp       timestamptz NOT NULL,
    text_sha256             text NOT NULL,
    embedding               real[] NOT NULL,
    PRIMARY KEY (item_id, event_timestamp)
);

-- Catalogue attributes as a feature source: one row per version, stamped with its
-- valid_from, so a point-in-time lookup returns the category and price of that time.
CREATE OR REPLACE VIEW interest.item_catalog AS
SELECT item_id, category_id AS item_category_id, price::double precision AS item_price,
       valid_from AS event_timestamp, created_at AS created_timestamp
FROM interest.item_versions;

-- Ground truth of the synthetic generator's planted interest shifts (for evaluation only;
-- never read by feature views).
CREATE TABLE IF NOT EXISTS interest.planted_interest_shifts (
    user_id         bigint PRIMARY KEY,
    shift_at        timestamptz NOT NULL,
    drift_start     timestamptz NOT NULL,
    drift_end       timestamptz NOT NULL,
    from_category   text NOT NULL,
    to_category     text NOT NULL,
    kind            text NOT NULL,          -- 'switch' or 'drift'
    source          text NOT NULL
);

-- The configuration of each synthetic shop loaded (to recompute its oracle; evaluation only).
CREATE TABLE IF NOT EXISTS interest.synthetic_shops (
    source          text PRIMARY KEY,       -- as in planted_interest_shifts.source
    config          jsonb NOT NULL          -- SyntheticConfig.to_json()
);

-- Columns added after their table first shipped, for databases made before: added only
-- where missing, so a schema run on an up-to-date database takes no table lock.
DO $$
DECLARE
    added record;
BEGIN
    FOR added IN SELECT * FROM (VALUES
        ('ingest_runs', 'error', 'text'),
        ('feature_watermarks', 'changed_at', 'timestamptz'),  -- (their next build is a full one)
        ('events', 'event_id', 'text'),
        ('events', 'recommendation_id', 'text')) AS c(table_name, column_name, column_type)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = 'interest' AND table_name = added.table_name
                         AND column_name = added.column_name) THEN
            EXECUTE format('ALTER TABLE interest.%I ADD COLUMN %I %s', added.table_name, added.column_name, added.column_type);
        END IF;
    END LOOP;
END $$;
-- Lifetime category counts (added 2026-11): a database built before them gets the column
-- and loses its build watermarks, so that its next feature build is a full one.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = 'interest' AND table_name = 'user_daily_features'
                     AND column_name = 'category_events_lifetime') THEN
        ALTER TABLE interest.user_daily_features ADD COLUMN category_events_lifetime integer[];
        DELETE FROM interest.feature_watermarks;
    END IF;
END $$;
-- An event is stored once per event_id (when given) and once per natural key (the primary key).
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON interest.events (event_id) WHERE event_id IS NOT NULL;

-- Feedback logging (issue 13): every /recommend answer and each item it showed, written by
-- interest_models.feedback.impression_log. Partitioned by day on served_at: the logger
-- creates a day's partition before its first row, and pruning drops whole days.
-- recommendations.context holds the policy's context matrix (candidates x context_dim,
-- row-major), so any policy can be replayed on what the logged one saw (off-policy evaluation).
CREATE TABLE IF NOT EXISTS interest.recommendations (
    recommendation_id   text NOT NULL,
    served_at           timestamptz NOT NULL,
    user_id             bigint NOT NULL,
    k                   integer NOT NULL,
    policy              text NOT NULL,            -- 'greedy' or 'bandit'
    policy_version      text NOT NULL,
    model_version       text NOT NULL,
    exploration         double precision NOT NULL, -- the policy's probability of a uniformly random list
    candidate_item_ids  bigint[] NOT NULL,        -- the candidates the policy chose from, by blend rank
    candidate_scores    real[] NOT NULL,          -- their blend scores
    ordered_rows        integer[] NOT NULL,       -- the policy's list before exploration (0-based candidate rows)
    context             real[] NOT NULL,          -- (candidates x context_dim) row-major
    context_dim         integer NOT NULL,
    PRIMARY KEY (recommendation_id, served_at)
) PARTITION BY RANGE (served_at);

CREATE TABLE IF NOT EXISTS interest.impressions (
    recommendation_id   text NOT NULL,
    served_at           timestamptz NOT NULL,
    user_id             bigint NOT NULL,
    item_id             bigint NOT NULL,
    position            smallint NOT NULL CHECK (position >= 1),   -- 1 = top
    score               real NOT NULL,
    propensity          double precision NOT NULL CHECK (propensity > 0 AND propensity <= 1),  -- P(this item at this position)
    explored            boolean NOT NULL,         -- shown by the policy's random list
    PRIMARY KEY (recommendation_id, served_at, position)
) PARTITION BY RANGE (served_at);
CREATE INDEX IF NOT EXISTS impressions_user_time ON interest.impressions (user_id, served_at);
-- Events answering a recommendation, joined to its impressions by (recommendation_id, user, item).
CREATE INDEX IF NOT EXISTS events_recommendation ON interest.events (recommendation_id, user_id, item_id)
    WHERE recommendation_id IS NOT NULL;
-- Each impression served in the 7 days up to day_end, with its position-discounted exposure
-- (1 / log2(position + 1)) and the strongest event answering it by then (max_type: 0 none
-- or a view, 1 click, 2 cart, 3 purchase). The feedback features read it (a SQL function:
-- the planner inlines it into their queries).
CREATE OR REPLACE FUNCTION interest.impression_outcomes(day_end timestamptz)
RETURNS TABLE (user_id bigint, item_id bigint, exposure numeric, max_type integer)
LANGUAGE sql STABLE AS $$
    SELECT i.user_id, i.item_id, 1.0 / log(2, i.position + 1), coalesce(f.max_type, 0)
    FROM interest.impressions i
    LEFT JOIN LATERAL (
        SELECT max(e.event_type) AS max_type FROM interest.events e
        WHERE e.recommendation_id = i.recommendation_id AND e.user_id = i.user_id AND e.item_id = i.item_id
          AND e.event_timestamp <= day_end
    ) f ON true
    WHERE i.served_at > day_end - interval '7 days' AND i.served_at <= day_end
$$;

-- Daily feedback features (Feast views user_feedback and item_feedback), written by
-- interest_models.feedback.features from impressions joined to events by recommendation_id.
-- Exposure is the position-discounted number of impressions (sum of 1 / log2(position + 1)),
-- so clicks / exposure is a CTR corrected for where the items were shown.
CREATE TABLE IF NOT EXISTS interest.user_feedback_daily (
    user_id                     bigint NOT NULL,
    event_timestamp             timestamptz NOT NULL,   -- end of the day (UTC)
    created_timestamp           timestamptz NOT NULL,
    impressions_7d              integer NOT NULL,
    clicks_7d                   integer NOT NULL,
    purchases_7d                integer NOT NULL,
    ctr_7d                      double precision,       -- clicks / impressions; NULL without impressions
    cvr_7d                      double precision,       -- purchases / clicks; NULL without clicks
    debiased_ctr_7d             double precision,       -- clicks / exposure
    category_clicks_7d          real[] NOT NULL,        -- index = category_id - 1
    category_exposure_7d        real[] NOT NULL,
    PRIMARY KEY (user_id, event_timestamp)
);

CREATE TABLE IF NOT EXISTS interest.item_feedback_daily (
    item_id                     bigint NOT NULL,
    event_timestamp             timestamptz NOT NULL,
    created_timestamp           timestamptz NOT NULL,
    item_impressions_7d         integer NOT NULL,
    item_clicks_7d              integer NOT NULL,
    item_purchases_7d           integer NOT NULL,
    item_ctr_7d                 double precision,
    item_cvr_7d                 double precision,
    item_exposure_7d            real NOT NULL,          -- sum of 1 / log2(position + 1) over its impressions
    item_debiased_ctr_7d        double precision,
    PRIMARY KEY (item_id, event_timestamp)
);

-- The rows written since a time, per feature source: materialization starts each view at
-- the oldest event_timestamp of the rows created since its last run (rows a build
-- recomputed for past days after late events, an embedding of an older catalogue version,
-- a feedback day written again). A build stamps all its rows alike, so these stay small.
CREATE INDEX IF NOT EXISTS user_daily_features_created ON interest.user_daily_features (created_timestamp);
CREATE INDEX IF NOT EXISTS user_recent_sequence_created ON interest.user_recent_sequence (created_timestamp);
CREATE INDEX IF NOT EXISTS user_interest_embedding_created ON interest.user_interest_embedding (created_timestamp);
CREATE INDEX IF NOT EXISTS item_daily_features_created ON interest.item_daily_features (created_timestamp);
CREATE INDEX IF NOT EXISTS category_daily_features_created ON interest.category_daily_features (created_timestamp);
CREATE INDEX IF NOT EXISTS item_embeddings_created ON interest.item_embeddings (created_timestamp);
CREATE INDEX IF NOT EXISTS user_feedback_daily_created ON interest.user_feedback_daily (created_timestamp);
CREATE INDEX IF NOT EXISTS item_feedback_daily_created ON interest.item_feedback_daily (created_timestamp);
