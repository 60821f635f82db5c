-- The retention sweeper finds finished jobs by age without scanning the table: a partial
-- index holds only jobs that will not be sent again (dead letters have their own index).
CREATE INDEX delivery_jobs_finished ON delivery_jobs(updated_at)
  WHERE status IN ('delivered', 'invalid', 'capped', 'superseded', 'expired', 'cancelled');
-- The log of pruned tokens is swept by age across every app.
CREATE INDEX pruned_tokens_at ON pruned_tokens(at);
