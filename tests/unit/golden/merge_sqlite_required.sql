-- completions
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT
            json_extract(value, '$[0]') AS user_id,
            json_extract(value, '$[1]') AS goal_id,
            json_extract(value, '$[2]') AS challenge_id,
            json_extract(value, '$[3]') AS namespace,
            json_extract(value, '$[4]') AS family,
            json_extract(value, '$[5]') AS target,
            json_extract(value, '$[6]') AS relative,
            json_extract(value, '$[7]') AS rotating,
            json_extract(value, '$[8]') AS reset_progress,
            json_extract(value, '$[9]') AS reselect,
            json_extract(value, '$[10]') AS amount,
            json_extract(value, '$[11]') AS value,
            json_extract(value, '$[12]') AS first_base,
            json_extract(value, '$[13]') AS first_time,
            json_extract(value, '$[14]') AS last_time,
            json_extract(value, '$[15]') AS period_start,
            json_extract(value, '$[16]') AS period_end,
            json_extract(value, '$[17]') AS top_level,
            json_extract(value, '$[18]') AS steps
        FROM json_each(:rows)
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, x.user_id IS NOT NULL AS found,
               x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
    FROM delta AS s
    LEFT JOIN user_goal_progress AS x ON x.user_id = s.user_id AND x.goal_id = s.goal_id
),
paired AS (
    SELECT k.*,
           FALSE AS held,
           k.found IS NOT TRUE AND NOT FALSE AS fresh,
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
    LEFT JOIN challenge_daily_marks AS m ON m.user_id = k.user_id AND m.goal_id = k.goal_id
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
               ELSE MIN(old_progress + amount, 2147483647) END AS new_progress,
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
           CASE WHEN relative = 1 THEN COALESCE(new_baseline, 0) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN (SELECT json_extract(e.value, '$[1]')
                 FROM json_each(b.steps) AS e
                 WHERE json_extract(e.value, '$[0]') >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.key LIMIT 1)
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
)
INSERT INTO challenge_goal_completions (namespace, user_id, challenge_id, goal_id,
        completed_at, period_start, period_end, created_at)
    SELECT n.namespace, n.user_id, n.challenge_id, n.goal_id,
        n.new_completed_at, n.completion_start, n.completion_end, strftime('%Y-%m-%d %H:%M:%f000', 'now')
    FROM merged AS n
    WHERE n.new_completion AND NOT n.fresh
    ORDER BY n.user_id, n.goal_id
    ON CONFLICT DO NOTHING
    RETURNING id;

-- update
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT
            json_extract(value, '$[0]') AS user_id,
            json_extract(value, '$[1]') AS goal_id,
            json_extract(value, '$[2]') AS challenge_id,
            json_extract(value, '$[3]') AS namespace,
            json_extract(value, '$[4]') AS family,
            json_extract(value, '$[5]') AS target,
            json_extract(value, '$[6]') AS relative,
            json_extract(value, '$[7]') AS rotating,
            json_extract(value, '$[8]') AS reset_progress,
            json_extract(value, '$[9]') AS reselect,
            json_extract(value, '$[10]') AS amount,
            json_extract(value, '$[11]') AS value,
            json_extract(value, '$[12]') AS first_base,
            json_extract(value, '$[13]') AS first_time,
            json_extract(value, '$[14]') AS last_time,
            json_extract(value, '$[15]') AS period_start,
            json_extract(value, '$[16]') AS period_end,
            json_extract(value, '$[17]') AS top_level,
            json_extract(value, '$[18]') AS steps
        FROM json_each(:rows)
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, x.user_id IS NOT NULL AS found,
               x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
    FROM delta AS s
    LEFT JOIN user_goal_progress AS x ON x.user_id = s.user_id AND x.goal_id = s.goal_id
),
paired AS (
    SELECT k.*,
           FALSE AS held,
           k.found IS NOT TRUE AND NOT FALSE AS fresh,
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
    LEFT JOIN challenge_daily_marks AS m ON m.user_id = k.user_id AND m.goal_id = k.goal_id
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
               ELSE MIN(old_progress + amount, 2147483647) END AS new_progress,
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
           CASE WHEN relative = 1 THEN COALESCE(new_baseline, 0) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN (SELECT json_extract(e.value, '$[1]')
                 FROM json_each(b.steps) AS e
                 WHERE json_extract(e.value, '$[0]') >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.key LIMIT 1)
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
)
UPDATE user_goal_progress AS t
    SET progress = n.new_progress,
        status = n.new_status,
        completed_at = n.new_completed_at,
        claimed_at = n.new_claimed_at,
        expires_at = n.new_expires_at,
        baseline_value = n.new_baseline,
        updated_at = strftime('%Y-%m-%d %H:%M:%f000', 'now')
    FROM merged AS n
    WHERE t.user_id = n.user_id AND t.goal_id = n.goal_id AND NOT n.fresh
    RETURNING user_id, goal_id;

-- marks
WITH
incoming AS (
    SELECT s.*, EXISTS (SELECT 1 FROM challenge_erasures AS e
                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace) AS erased
    FROM (
    SELECT
            json_extract(value, '$[0]') AS user_id,
            json_extract(value, '$[1]') AS goal_id,
            json_extract(value, '$[2]') AS challenge_id,
            json_extract(value, '$[3]') AS namespace,
            json_extract(value, '$[4]') AS family,
            json_extract(value, '$[5]') AS target,
            json_extract(value, '$[6]') AS relative,
            json_extract(value, '$[7]') AS rotating,
            json_extract(value, '$[8]') AS reset_progress,
            json_extract(value, '$[9]') AS reselect,
            json_extract(value, '$[10]') AS amount,
            json_extract(value, '$[11]') AS value,
            json_extract(value, '$[12]') AS first_base,
            json_extract(value, '$[13]') AS first_time,
            json_extract(value, '$[14]') AS last_time,
            json_extract(value, '$[15]') AS period_start,
            json_extract(value, '$[16]') AS period_end,
            json_extract(value, '$[17]') AS top_level,
            json_extract(value, '$[18]') AS steps
        FROM json_each(:rows)
    ) AS s
),
delta AS (
    SELECT s.*
    FROM incoming AS s
    WHERE NOT s.erased
),
locked AS (
    SELECT s.*, x.user_id IS NOT NULL AS found,
               x.progress AS row_progress,
               x.status AS row_status,
               x.completed_at AS row_completed_at,
               x.claimed_at AS row_claimed_at,
               x.updated_at AS row_updated_at,
               x.is_active AS row_is_active,
               x.expires_at AS row_expires_at,
               x.baseline_value AS row_baseline_value
    FROM delta AS s
    LEFT JOIN user_goal_progress AS x ON x.user_id = s.user_id AND x.goal_id = s.goal_id
),
paired AS (
    SELECT k.*,
           FALSE AS held,
           k.found IS NOT TRUE AND NOT FALSE AS fresh,
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
    LEFT JOIN challenge_daily_marks AS m ON m.user_id = k.user_id AND m.goal_id = k.goal_id
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
               ELSE MIN(old_progress + amount, 2147483647) END AS new_progress,
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
           CASE WHEN relative = 1 THEN COALESCE(new_baseline, 0) ELSE 0 END
               AS progress_offset
    FROM baselines AS b
),
reached AS MATERIALIZED (
    SELECT b.*,
           CASE WHEN top_level >= target + progress_offset - base_level
               THEN (SELECT json_extract(e.value, '$[1]')
                 FROM json_each(b.steps) AS e
                 WHERE json_extract(e.value, '$[0]') >= b.target + b.progress_offset - b.base_level
                 ORDER BY e.key LIMIT 1)
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
)
INSERT INTO challenge_daily_marks (user_id, goal_id, day)
    SELECT p.user_id, p.goal_id, p.period_start
    FROM paired AS p
    WHERE p.family = 4 AND ((NOT p.held AND NOT p.fresh AND p.is_active))
    ORDER BY p.user_id, p.goal_id
    ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day
    WHERE challenge_daily_marks.day < excluded.day;
