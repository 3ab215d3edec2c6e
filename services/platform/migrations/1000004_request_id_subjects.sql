-- Whom each stored response is about, so that erasing a subject's personal data (GDPR) also
-- forgets the stored responses that carry it (crm_platform::idempotency::forget_subject).
--
-- `subjects` holds '<resource type>/<id>' of every resource the response describes. A forgotten
-- row keeps its key, so a replay is answered "erased" instead of running the write again (which
-- would bring the subject back), but loses its response and request hash.
--
-- Unqualified names: applied in every service's schema (see 1000001_request_ids.sql).
ALTER TABLE request_ids ADD COLUMN IF NOT EXISTS subjects text[] NOT NULL DEFAULT '{}';
ALTER TABLE request_ids ADD COLUMN IF NOT EXISTS forget_time timestamptz;
CREATE INDEX IF NOT EXISTS request_ids_subjects_idx ON request_ids USING gin (subjects);
