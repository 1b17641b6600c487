-- A held message waits for the subject's previous event among the types its consumer
-- binds (its `prev` stamp), not for sequence − 1: a consumer binds only what it handles.
ALTER TABLE held_messages ADD COLUMN after_sequence integer;
UPDATE held_messages SET after_sequence = sequence - 1;
ALTER TABLE held_messages ALTER COLUMN after_sequence SET NOT NULL;
