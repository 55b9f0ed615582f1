-- jobs.retry_jitter was never settable (always its default, 0.2): the retry policy's jitter
-- is a constant of jobsched.domain.retry.RetryPolicy, not a column read on every claim.
ALTER TABLE jobs DROP COLUMN IF EXISTS retry_jitter;
