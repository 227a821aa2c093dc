-- The issue time of the last boot token each target claimed: a boot token
-- claims only when issued later, so each is good for one registration.
ALTER TABLE agent_tokens ADD COLUMN claimed BIGINT NOT NULL DEFAULT 0;
