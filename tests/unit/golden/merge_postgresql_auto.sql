-- postgres
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT u.user_id,
               (CAST(:goal_id AS text[]))[u.goal_ref] AS goal_id,
               (CAST(:challenge_id AS text[]))[u.goal_ref] AS challenge_id,
               (CAST(:namespace AS text[]))[u.goal_ref] AS namespace,
               u.family,
               (CAST(:target AS int[]))[u.goal_ref] AS target,
               (CAST(:relative AS int[]))[u.goal_ref] AS relative,
               (CAST(:rotating AS int[]))[u.goal_ref] AS rotating,
               (CAST(:reset_progress AS int[]))[u.goal_ref] AS reset_progress,
               (CAST(:reselect AS int[]))[u.goal_ref] AS reselect,
               u.amount,
               u.value,
               u.first_base,
               u.first_time,
               u.last_time,
               u.period_start,
               u.period_end,
               u.top_level,
               u.steps
        FROM unnest(
            CAST(:user_id AS text[]),
            CAST(:goal_ref AS int[]),
            CAST(:family AS int[]),
            CAST(:amount AS int[]),
            CAST(:value AS int[]),
            CAST(:first_base AS int[]),
            CAST(:first_time AS timestamp[]),
            CAST(:last_time AS timestamp[]),
            CAST(:period_start AS timestamp[]),
            CAST(:period_end AS timestamp[]),
            CAST(:top_level AS int[]),
            CAST(:steps AS text[])
        ) AS u(
            user_id,
            goal_ref,
            family,
            amount,
            value,
            first_base,
            first_time,
            last_time,
            period_start,
            period_end,
            top_level,
            steps
        )
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, l.*
    FROM delta AS s
    LEFT JOIN LATERAL (
        SELECT TRUE AS found, x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
        FROM user_goal_progress AS x
        WHERE x.user_id = s.user_id AND x.goal_id = s.goal_id
        FOR UPDATE OF x SKIP LOCKED
    ) AS l ON TRUE
),
paired AS (
    SELECT k.*,
           (h.held IS NOT NULL) AS held,
           k.found IS NOT TRUE AND NOT (h.held IS NOT NULL) AS fresh,
           COALESCE(k.row_progress, 0) AS old_progress,
           COALESCE(k.row_status, 'not_started') AS old_status,
           k.row_completed_at AS old_completed_at,
           k.row_claimed_at AS old_claimed_at,
           k.row_updated_at AS old_updated_at,
           COALESCE(k.row_is_active, TRUE) AS is_active,
           k.row_expires_at AS old_expires_at,
           k.row_baseline_value AS old_baseline,
           m.day AS counted_day
    FROM locked AS k
    LEFT JOIN LATERAL (
        SELECT m.day FROM challenge_daily_marks AS m
        WHERE k.family = 4 AND m.user_id = k.user_id AND m.goal_id = k.goal_id
        LIMIT 1
    ) AS m ON TRUE
    LEFT JOIN LATERAL (
        SELECT TRUE AS held FROM user_goal_progress AS x
        WHERE k.found IS NULL AND x.user_id = k.user_id AND x.goal_id = k.goal_id LIMIT 1
    ) AS h ON TRUE
),
periods AS (
    SELECT p.*,
           (old_status = 'claimed' OR old_claimed_at IS NOT NULL) AS claimed,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN first_time >= old_expires_at
               ELSE old_updated_at < period_start END) AS new_period,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN period_end < old_expires_at
               ELSE old_updated_at >= period_end END) AS stale,
           (family = 3 AND (old_completed_at IS NULL
               OR old_completed_at < period_start)) AS new_day
    FROM paired AS p
),
guards AS (
    SELECT p.*,
           (claimed AND (new_day OR (new_period AND reselect = 1))) AS reopen,
           (rotating = 1 AND reset_progress = 1 AND (fresh OR new_period)) AS restart
    FROM periods AS p
),
levels AS (
    SELECT g.*,
           CASE family WHEN 2 THEN value WHEN 3 THEN 1
               ELSE LEAST(CAST(old_progress AS BIGINT) + amount, 2147483647) END AS new_progress,
           CASE family WHEN 2 THEN COALESCE(first_base, 0) WHEN 3 THEN 0
               ELSE old_progress END AS first_base_value,
           CASE WHEN family IN (2, 3) THEN 0
               ELSE old_progress END AS base_level
    FROM guards AS g
    WHERE NOT held AND is_active AND NOT stale
      AND (family <> 3 OR new_day)
      AND (NOT claimed OR reopen)
      AND (family <> 4 OR fresh
           OR counted_day IS NULL OR counted_day < period_start)
),
baselines AS (
    SELECT v.*,
           CASE WHEN relative = 1 AND (restart OR old_baseline IS NULL)
               THEN first_base_value ELSE old_baseline END AS new_baseline
    FROM levels AS v
),
targets AS (
    SELECT b.*,
           CASE WHEN relative = 1 THEN CAST(COALESCE(new_baseline, 0) AS BIGINT) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN COALESCE((SELECT CAST(e.step->>1 AS TIMESTAMP)
                 FROM jsonb_array_elements(CAST(b.steps AS jsonb))
                      WITH ORDINALITY AS e(step, n)
                 WHERE CAST(e.step->>0 AS BIGINT) >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.n LIMIT 1), b.first_time)
           END AS step_time
    FROM targets AS b
),
outcome AS (
    SELECT r.*,
           (new_progress - progress_offset >= target OR step_time IS NOT NULL) AS completes,
           COALESCE(step_time, CASE WHEN family = 4 THEN first_time ELSE last_time END)
               AS completion_time,
           (old_status IN ('completed', 'claimed') AND NOT restart) AS keep_completed
    FROM reached AS r
),
merged AS MATERIALIZED (
    SELECT user_id, goal_id, challenge_id, namespace, family, fresh, is_active,
           new_progress,
           CASE WHEN family = 3 OR keep_completed OR completes
               THEN 'completed' ELSE 'in_progress' END AS new_status,
           CASE WHEN family = 3 THEN first_time
               WHEN keep_completed THEN COALESCE(old_completed_at, completion_time)
               WHEN completes THEN completion_time
               WHEN restart THEN NULL
               ELSE old_completed_at END AS new_completed_at,
           CASE WHEN reopen THEN NULL ELSE old_claimed_at END AS new_claimed_at,
           CASE WHEN rotating = 1 THEN period_end ELSE old_expires_at END AS new_expires_at,
           new_baseline,
           (family = 3 OR (completes AND NOT keep_completed)) AS new_completion,
           CASE WHEN rotating = 1 OR family = 3 THEN period_start END AS completion_start,
           CASE WHEN rotating = 1 OR family = 3 THEN period_end END AS completion_end
    FROM outcome
),
updated AS (
    UPDATE user_goal_progress AS t
        SET progress = n.new_progress,
            status = n.new_status,
            completed_at = n.new_completed_at,
            claimed_at = n.new_claimed_at,
            expires_at = n.new_expires_at,
            baseline_value = n.new_baseline,
            updated_at = (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE t.user_id = n.user_id AND t.goal_id = n.goal_id AND NOT n.fresh
        RETURNING t.user_id, t.goal_id
),
inserted AS (
    INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress,
            status, completed_at, claimed_at, created_at, updated_at, is_active,
            assigned_at, expires_at, baseline_value)
        SELECT user_id, goal_id, challenge_id, namespace, new_progress,
            new_status, new_completed_at, NULL, (now() AT TIME ZONE 'UTC'),
            (now() AT TIME ZONE 'UTC'), TRUE,
            (now() AT TIME ZONE 'UTC'), new_expires_at, new_baseline
        FROM merged AS n
        WHERE n.fresh
        ORDER BY user_id, goal_id
        ON CONFLICT (user_id, goal_id) DO NOTHING
        RETURNING user_id, goal_id
),
marks AS (
    INSERT INTO challenge_daily_marks (user_id, goal_id, day)
        SELECT p.user_id, p.goal_id, p.period_start
        FROM paired AS p
        WHERE p.family = 4 AND ((NOT p.held AND NOT p.fresh)
            OR (p.fresh AND ((SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
                OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id))))
        ORDER BY p.user_id, p.goal_id
        ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day
        WHERE challenge_daily_marks.day < excluded.day
),
completions AS (
    INSERT INTO challenge_goal_completions (namespace, user_id, challenge_id, goal_id,
            completed_at, period_start, period_end, created_at)
        SELECT n.namespace, n.user_id, n.challenge_id, n.goal_id,
            n.new_completed_at, n.completion_start, n.completion_end, (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE n.new_completion
          AND (EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = n.user_id AND u.goal_id = n.goal_id)
              OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = n.user_id AND i.goal_id = n.goal_id))
        ORDER BY n.user_id, n.goal_id
        ON CONFLICT DO NOTHING
        RETURNING id
)
SELECT 'U' AS tag, count(*) AS n, NULL AS user_id, NULL AS goal_id FROM updated
UNION ALL
SELECT 'I', count(*), NULL, NULL FROM inserted
UNION ALL
SELECT 'r', 1, p.user_id, p.goal_id FROM paired AS p
    WHERE p.fresh AND NOT (SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
    AND NOT EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id)
UNION ALL
SELECT 'C', count(*), NULL, NULL FROM completions
UNION ALL
SELECT 'e', 1, s.user_id, s.goal_id FROM incoming AS s WHERE s.erased
UNION ALL
SELECT 'c', 1, user_id, goal_id FROM paired WHERE held;

-- claimed
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT u.user_id,
               (CAST(:goal_id AS text[]))[u.goal_ref] AS goal_id,
               (CAST(:challenge_id AS text[]))[u.goal_ref] AS challenge_id,
               (CAST(:namespace AS text[]))[u.goal_ref] AS namespace,
               u.family,
               (CAST(:target AS int[]))[u.goal_ref] AS target,
               (CAST(:relative AS int[]))[u.goal_ref] AS relative,
               (CAST(:rotating AS int[]))[u.goal_ref] AS rotating,
               (CAST(:reset_progress AS int[]))[u.goal_ref] AS reset_progress,
               (CAST(:reselect AS int[]))[u.goal_ref] AS reselect,
               u.amount,
               u.value,
               u.first_base,
               u.first_time,
               u.last_time,
               u.period_start,
               u.period_end,
               u.top_level,
               u.steps
        FROM unnest(
            CAST(:user_id AS text[]),
            CAST(:goal_ref AS int[]),
            CAST(:family AS int[]),
            CAST(:amount AS int[]),
            CAST(:value AS int[]),
            CAST(:first_base AS int[]),
            CAST(:first_time AS timestamp[]),
            CAST(:last_time AS timestamp[]),
            CAST(:period_start AS timestamp[]),
            CAST(:period_end AS timestamp[]),
            CAST(:top_level AS int[]),
            CAST(:steps AS text[])
        ) AS u(
            user_id,
            goal_ref,
            family,
            amount,
            value,
            first_base,
            first_time,
            last_time,
            period_start,
            period_end,
            top_level,
            steps
        )
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, l.*
    FROM delta AS s
    LEFT JOIN LATERAL (
        SELECT TRUE AS found, x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
        FROM user_goal_progress AS x
        WHERE x.user_id = s.user_id AND x.goal_id = s.goal_id
        FOR UPDATE OF x SKIP LOCKED
    ) AS l ON TRUE
),
owners AS (
    SELECT k.*,
           bool_or(h.held IS NOT NULL) OVER (PARTITION BY k.user_id) AS user_held
    FROM locked AS k
    LEFT JOIN LATERAL (
        SELECT TRUE AS held FROM user_goal_progress AS x
        WHERE k.found IS NULL AND x.user_id = k.user_id AND x.goal_id = k.goal_id LIMIT 1
    ) AS h ON TRUE
),
paired AS (
    SELECT k.*,
           k.user_held AS held,
           k.found IS NOT TRUE AND NOT k.user_held AS fresh,
           COALESCE(k.row_progress, 0) AS old_progress,
           COALESCE(k.row_status, 'not_started') AS old_status,
           k.row_completed_at AS old_completed_at,
           k.row_claimed_at AS old_claimed_at,
           k.row_updated_at AS old_updated_at,
           COALESCE(k.row_is_active, TRUE) AS is_active,
           k.row_expires_at AS old_expires_at,
           k.row_baseline_value AS old_baseline,
           m.day AS counted_day
    FROM owners AS k
    LEFT JOIN LATERAL (
        SELECT m.day FROM challenge_daily_marks AS m
        WHERE k.family = 4 AND m.user_id = k.user_id AND m.goal_id = k.goal_id
        LIMIT 1
    ) AS m ON TRUE
),
periods AS (
    SELECT p.*,
           (old_status = 'claimed' OR old_claimed_at IS NOT NULL) AS claimed,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN first_time >= old_expires_at
               ELSE old_updated_at < period_start END) AS new_period,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN period_end < old_expires_at
               ELSE old_updated_at >= period_end END) AS stale,
           (family = 3 AND (old_completed_at IS NULL
               OR old_completed_at < period_start)) AS new_day
    FROM paired AS p
),
guards AS (
    SELECT p.*,
           (claimed AND (new_day OR (new_period AND reselect = 1))) AS reopen,
           (rotating = 1 AND reset_progress = 1 AND (fresh OR new_period)) AS restart
    FROM periods AS p
),
levels AS (
    SELECT g.*,
           CASE family WHEN 2 THEN value WHEN 3 THEN 1
               ELSE LEAST(CAST(old_progress AS BIGINT) + amount, 2147483647) END AS new_progress,
           CASE family WHEN 2 THEN COALESCE(first_base, 0) WHEN 3 THEN 0
               ELSE old_progress END AS first_base_value,
           CASE WHEN family IN (2, 3) THEN 0
               ELSE old_progress END AS base_level
    FROM guards AS g
    WHERE NOT held AND is_active AND NOT stale
      AND (family <> 3 OR new_day)
      AND (NOT claimed OR reopen)
      AND (family <> 4 OR fresh
           OR counted_day IS NULL OR counted_day < period_start)
),
baselines AS (
    SELECT v.*,
           CASE WHEN relative = 1 AND (restart OR old_baseline IS NULL)
               THEN first_base_value ELSE old_baseline END AS new_baseline
    FROM levels AS v
),
targets AS (
    SELECT b.*,
           CASE WHEN relative = 1 THEN CAST(COALESCE(new_baseline, 0) AS BIGINT) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN COALESCE((SELECT CAST(e.step->>1 AS TIMESTAMP)
                 FROM jsonb_array_elements(CAST(b.steps AS jsonb))
                      WITH ORDINALITY AS e(step, n)
                 WHERE CAST(e.step->>0 AS BIGINT) >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.n LIMIT 1), b.first_time)
           END AS step_time
    FROM targets AS b
),
outcome AS (
    SELECT r.*,
           (new_progress - progress_offset >= target OR step_time IS NOT NULL) AS completes,
           COALESCE(step_time, CASE WHEN family = 4 THEN first_time ELSE last_time END)
               AS completion_time,
           (old_status IN ('completed', 'claimed') AND NOT restart) AS keep_completed
    FROM reached AS r
),
merged AS MATERIALIZED (
    SELECT user_id, goal_id, challenge_id, namespace, family, fresh, is_active,
           new_progress,
           CASE WHEN family = 3 OR keep_completed OR completes
               THEN 'completed' ELSE 'in_progress' END AS new_status,
           CASE WHEN family = 3 THEN first_time
               WHEN keep_completed THEN COALESCE(old_completed_at, completion_time)
               WHEN completes THEN completion_time
               WHEN restart THEN NULL
               ELSE old_completed_at END AS new_completed_at,
           CASE WHEN reopen THEN NULL ELSE old_claimed_at END AS new_claimed_at,
           CASE WHEN rotating = 1 THEN period_end ELSE old_expires_at END AS new_expires_at,
           new_baseline,
           (family = 3 OR (completes AND NOT keep_completed)) AS new_completion,
           CASE WHEN rotating = 1 OR family = 3 THEN period_start END AS completion_start,
           CASE WHEN rotating = 1 OR family = 3 THEN period_end END AS completion_end
    FROM outcome
),
updated AS (
    UPDATE user_goal_progress AS t
        SET progress = n.new_progress,
            status = n.new_status,
            completed_at = n.new_completed_at,
            claimed_at = n.new_claimed_at,
            expires_at = n.new_expires_at,
            baseline_value = n.new_baseline,
            updated_at = (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE t.user_id = n.user_id AND t.goal_id = n.goal_id AND NOT n.fresh
        RETURNING t.user_id, t.goal_id
),
inserted AS (
    INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress,
            status, completed_at, claimed_at, created_at, updated_at, is_active,
            assigned_at, expires_at, baseline_value)
        SELECT user_id, goal_id, challenge_id, namespace, new_progress,
            new_status, new_completed_at, NULL, (now() AT TIME ZONE 'UTC'),
            (now() AT TIME ZONE 'UTC'), TRUE,
            (now() AT TIME ZONE 'UTC'), new_expires_at, new_baseline
        FROM merged AS n
        WHERE n.fresh
        ORDER BY user_id, goal_id
        ON CONFLICT (user_id, goal_id) DO NOTHING
        RETURNING user_id, goal_id
),
marks AS (
    INSERT INTO challenge_daily_marks (user_id, goal_id, day)
        SELECT p.user_id, p.goal_id, p.period_start
        FROM paired AS p
        WHERE p.family = 4 AND ((NOT p.held AND NOT p.fresh)
            OR (p.fresh AND ((SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
                OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id))))
        ORDER BY p.user_id, p.goal_id
        ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day
        WHERE challenge_daily_marks.day < excluded.day
),
completions AS (
    INSERT INTO challenge_goal_completions (namespace, user_id, challenge_id, goal_id,
            completed_at, period_start, period_end, created_at)
        SELECT n.namespace, n.user_id, n.challenge_id, n.goal_id,
            n.new_completed_at, n.completion_start, n.completion_end, (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE n.new_completion
          AND (EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = n.user_id AND u.goal_id = n.goal_id)
              OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = n.user_id AND i.goal_id = n.goal_id))
        ORDER BY n.user_id, n.goal_id
        ON CONFLICT DO NOTHING
        RETURNING id
),
claim_ids AS (
    SELECT * FROM unnest(CAST(:event_ids AS text[]), CAST(:event_users AS text[]))
    AS e(event_id, user_id)
    WHERE e.user_id NOT IN (SELECT user_id FROM paired WHERE held)
),
claimed AS (
    INSERT INTO challenge_processed_events (event_id, expires_at)
        SELECT event_id, CAST(:expires AS TIMESTAMP) FROM claim_ids
        ORDER BY event_id
        ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at
        WHERE challenge_processed_events.expires_at < CAST(:now AS TIMESTAMP)
        RETURNING event_id
)
SELECT 'U' AS tag, count(*) AS n, NULL AS user_id, NULL AS goal_id FROM updated
UNION ALL
SELECT 'I', count(*), NULL, NULL FROM inserted
UNION ALL
SELECT 'r', 1, p.user_id, p.goal_id FROM paired AS p
    WHERE p.fresh AND NOT (SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
    AND NOT EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id)
UNION ALL
SELECT 'C', count(*), NULL, NULL FROM completions
UNION ALL
SELECT 'e', 1, s.user_id, s.goal_id FROM incoming AS s WHERE s.erased
UNION ALL
SELECT 'c', 1, user_id, goal_id FROM paired WHERE held
UNION ALL
SELECT 'v', 1 / CASE WHEN (SELECT count(*) FROM claimed)
        = (SELECT count(*) FROM claim_ids)
        AND (SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh) THEN 1 ELSE 0 END, NULL, NULL;

-- optimistic
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT u.user_id,
               (CAST(:goal_id AS text[]))[u.goal_ref] AS goal_id,
               (CAST(:challenge_id AS text[]))[u.goal_ref] AS challenge_id,
               (CAST(:namespace AS text[]))[u.goal_ref] AS namespace,
               u.family,
               (CAST(:target AS int[]))[u.goal_ref] AS target,
               (CAST(:relative AS int[]))[u.goal_ref] AS relative,
               (CAST(:rotating AS int[]))[u.goal_ref] AS rotating,
               (CAST(:reset_progress AS int[]))[u.goal_ref] AS reset_progress,
               (CAST(:reselect AS int[]))[u.goal_ref] AS reselect,
               u.amount,
               u.value,
               u.first_base,
               u.first_time,
               u.last_time,
               u.period_start,
               u.period_end,
               u.top_level,
               u.steps
        FROM unnest(
            CAST(:user_id AS text[]),
            CAST(:goal_ref AS int[]),
            CAST(:family AS int[]),
            CAST(:amount AS int[]),
            CAST(:value AS int[]),
            CAST(:first_base AS int[]),
            CAST(:first_time AS timestamp[]),
            CAST(:last_time AS timestamp[]),
            CAST(:period_start AS timestamp[]),
            CAST(:period_end AS timestamp[]),
            CAST(:top_level AS int[]),
            CAST(:steps AS text[])
        ) AS u(
            user_id,
            goal_ref,
            family,
            amount,
            value,
            first_base,
            first_time,
            last_time,
            period_start,
            period_end,
            top_level,
            steps
        )
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, l.*
    FROM delta AS s
    LEFT JOIN LATERAL (
        SELECT TRUE AS found, x.ctid AS row_ctid, x.xmin AS row_xmin, x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
        FROM user_goal_progress AS x
        WHERE x.user_id = s.user_id AND x.goal_id = s.goal_id
        LIMIT 1
    ) AS l ON TRUE
),
paired AS (
    SELECT k.*,
           FALSE AS held,
           k.found IS NOT TRUE AS fresh,
           COALESCE(k.row_progress, 0) AS old_progress,
           COALESCE(k.row_status, 'not_started') AS old_status,
           k.row_completed_at AS old_completed_at,
           k.row_claimed_at AS old_claimed_at,
           k.row_updated_at AS old_updated_at,
           COALESCE(k.row_is_active, TRUE) AS is_active,
           k.row_expires_at AS old_expires_at,
           k.row_baseline_value AS old_baseline,
           m.day AS counted_day
    FROM locked AS k
    LEFT JOIN LATERAL (
        SELECT m.day FROM challenge_daily_marks AS m
        WHERE k.family = 4 AND m.user_id = k.user_id AND m.goal_id = k.goal_id
        LIMIT 1
    ) AS m ON TRUE
),
periods AS (
    SELECT p.*,
           (old_status = 'claimed' OR old_claimed_at IS NOT NULL) AS claimed,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN first_time >= old_expires_at
               ELSE old_updated_at < period_start END) AS new_period,
           (rotating = 1 AND NOT fresh AND CASE
               WHEN old_expires_at IS NOT NULL THEN period_end < old_expires_at
               ELSE old_updated_at >= period_end END) AS stale,
           (family = 3 AND (old_completed_at IS NULL
               OR old_completed_at < period_start)) AS new_day
    FROM paired AS p
),
guards AS (
    SELECT p.*,
           (claimed AND (new_day OR (new_period AND reselect = 1))) AS reopen,
           (rotating = 1 AND reset_progress = 1 AND (fresh OR new_period)) AS restart
    FROM periods AS p
),
levels AS (
    SELECT g.*,
           CASE family WHEN 2 THEN value WHEN 3 THEN 1
               ELSE LEAST(CAST(old_progress AS BIGINT) + amount, 2147483647) END AS new_progress,
           CASE family WHEN 2 THEN COALESCE(first_base, 0) WHEN 3 THEN 0
               ELSE old_progress END AS first_base_value,
           CASE WHEN family IN (2, 3) THEN 0
               ELSE old_progress END AS base_level
    FROM guards AS g
    WHERE NOT held AND is_active AND NOT stale
      AND (family <> 3 OR new_day)
      AND (NOT claimed OR reopen)
      AND (family <> 4 OR fresh
           OR counted_day IS NULL OR counted_day < period_start)
),
baselines AS (
    SELECT v.*,
           CASE WHEN relative = 1 AND (restart OR old_baseline IS NULL)
               THEN first_base_value ELSE old_baseline END AS new_baseline
    FROM levels AS v
),
targets AS (
    SELECT b.*,
           CASE WHEN relative = 1 THEN CAST(COALESCE(new_baseline, 0) AS BIGINT) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN COALESCE((SELECT CAST(e.step->>1 AS TIMESTAMP)
                 FROM jsonb_array_elements(CAST(b.steps AS jsonb))
                      WITH ORDINALITY AS e(step, n)
                 WHERE CAST(e.step->>0 AS BIGINT) >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.n LIMIT 1), b.first_time)
           END AS step_time
    FROM targets AS b
),
outcome AS (
    SELECT r.*,
           (new_progress - progress_offset >= target OR step_time IS NOT NULL) AS completes,
           COALESCE(step_time, CASE WHEN family = 4 THEN first_time ELSE last_time END)
               AS completion_time,
           (old_status IN ('completed', 'claimed') AND NOT restart) AS keep_completed
    FROM reached AS r
),
merged AS MATERIALIZED (
    SELECT user_id, goal_id, challenge_id, namespace, family, fresh, is_active,
           row_ctid, row_xmin,
           new_progress,
           CASE WHEN family = 3 OR keep_completed OR completes
               THEN 'completed' ELSE 'in_progress' END AS new_status,
           CASE WHEN family = 3 THEN first_time
               WHEN keep_completed THEN COALESCE(old_completed_at, completion_time)
               WHEN completes THEN completion_time
               WHEN restart THEN NULL
               ELSE old_completed_at END AS new_completed_at,
           CASE WHEN reopen THEN NULL ELSE old_claimed_at END AS new_claimed_at,
           CASE WHEN rotating = 1 THEN period_end ELSE old_expires_at END AS new_expires_at,
           new_baseline,
           (family = 3 OR (completes AND NOT keep_completed)) AS new_completion,
           CASE WHEN rotating = 1 OR family = 3 THEN period_start END AS completion_start,
           CASE WHEN rotating = 1 OR family = 3 THEN period_end END AS completion_end
    FROM outcome
),
updated AS (
    UPDATE user_goal_progress AS t
        SET progress = n.new_progress,
            status = n.new_status,
            completed_at = n.new_completed_at,
            claimed_at = n.new_claimed_at,
            expires_at = n.new_expires_at,
            baseline_value = n.new_baseline,
            updated_at = (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE t.ctid = n.row_ctid AND t.xmin = n.row_xmin AND t.user_id = n.user_id AND t.goal_id = n.goal_id AND NOT n.fresh
        RETURNING t.user_id, t.goal_id
),
inserted AS (
    INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress,
            status, completed_at, claimed_at, created_at, updated_at, is_active,
            assigned_at, expires_at, baseline_value)
        SELECT user_id, goal_id, challenge_id, namespace, new_progress,
            new_status, new_completed_at, NULL, (now() AT TIME ZONE 'UTC'),
            (now() AT TIME ZONE 'UTC'), TRUE,
            (now() AT TIME ZONE 'UTC'), new_expires_at, new_baseline
        FROM merged AS n
        WHERE n.fresh
        ORDER BY user_id, goal_id
        ON CONFLICT (user_id, goal_id) DO NOTHING
        RETURNING user_id, goal_id
),
marks AS (
    INSERT INTO challenge_daily_marks (user_id, goal_id, day)
        SELECT p.user_id, p.goal_id, p.period_start
        FROM paired AS p
        WHERE p.family = 4 AND ((NOT p.held AND NOT p.fresh
            AND ((SELECT count(*) FROM updated) = (SELECT count(*) FROM merged WHERE NOT fresh)
                OR EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = p.user_id AND u.goal_id = p.goal_id)
                OR NOT EXISTS (SELECT 1 FROM merged AS n WHERE n.user_id = p.user_id AND n.goal_id = p.goal_id)))
            OR (p.fresh AND ((SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
                OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id))))
        ORDER BY p.user_id, p.goal_id
        ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day
        WHERE challenge_daily_marks.day < excluded.day
),
completions AS (
    INSERT INTO challenge_goal_completions (namespace, user_id, challenge_id, goal_id,
            completed_at, period_start, period_end, created_at)
        SELECT n.namespace, n.user_id, n.challenge_id, n.goal_id,
            n.new_completed_at, n.completion_start, n.completion_end, (now() AT TIME ZONE 'UTC')
        FROM merged AS n
        WHERE n.new_completion
          AND (EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = n.user_id AND u.goal_id = n.goal_id)
              OR EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = n.user_id AND i.goal_id = n.goal_id))
        ORDER BY n.user_id, n.goal_id
        ON CONFLICT DO NOTHING
        RETURNING id
)
SELECT 'U' AS tag, count(*) AS n, NULL AS user_id, NULL AS goal_id FROM updated
UNION ALL
SELECT 'I', count(*), NULL, NULL FROM inserted
UNION ALL
SELECT 'r', 1, p.user_id, p.goal_id FROM paired AS p
    WHERE p.fresh AND NOT (SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)
    AND NOT EXISTS (SELECT 1 FROM inserted AS i WHERE i.user_id = p.user_id AND i.goal_id = p.goal_id)
UNION ALL
SELECT 'r', 1, n.user_id, n.goal_id FROM merged AS n
    WHERE NOT n.fresh AND NOT (SELECT count(*) FROM updated) = (SELECT count(*) FROM merged WHERE NOT fresh)
    AND NOT EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = n.user_id AND u.goal_id = n.goal_id)
UNION ALL
SELECT 'C', count(*), NULL, NULL FROM completions
UNION ALL
SELECT 'e', 1, s.user_id, s.goal_id FROM incoming AS s WHERE s.erased;
