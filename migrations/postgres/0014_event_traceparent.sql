-- The W3C trace context of the span that accepted an event (set only while traces are
-- exported), so its fan-out and sends join the same trace in whichever process and after
-- whichever restart they run.
ALTER TABLE events ADD COLUMN traceparent TEXT;
