-- 005's partial index halved burn-down throughput (jobsched bench throughput --mode
-- burn-down --jobs 20000: 1,705/s without it against 900-1,000/s with it, same code):
-- every one-shot fire and completion moved rows in and out of it, and plans on jobs
-- picked it. The leader's completion sweep runs rarely and scans instead.
DROP INDEX IF EXISTS jobs_without_next_fire;
