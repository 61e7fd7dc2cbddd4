-- Indexes for run and experiment search (issue 5). bench/RESULTS.md shows the plans that use them and
-- what each is worth at 10k and 1M runs.

-- Filter on a metric's latest value and order by it: walk (key, value) in either direction, run_id
-- breaking ties, and stop after a page (1M runs: ~5 ms instead of ~750 ms).
CREATE INDEX latest_metrics_by_value ON latest_metrics (key, value, run_id);
-- Params and tags: equality, prefix LIKE and IN on a key's values, ordering by them, and index-only
-- probes of (key, value, run_id) for each candidate run.
CREATE INDEX params_by_value ON params (key, value, run_id);
CREATE INDEX tags_by_value ON tags (key, value, run_id);
-- Newest runs across experiments (the default order when a search spans several or all of them).
CREATE INDEX runs_by_start_time ON runs (start_time DESC, run_id DESC);
