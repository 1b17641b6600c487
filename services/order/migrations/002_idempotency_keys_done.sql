-- A key is claimed by the transaction that places its order and stores the response
-- with it, so every row is a finished one. Claims left without a response by a request
-- that died under an earlier version (which claimed first and placed after) held only
-- the key: dropping them frees it, and the next request with that key places its order.
DELETE FROM idempotency_keys WHERE state <> 'done' OR response_body IS NULL;
ALTER TABLE idempotency_keys ALTER COLUMN response_body SET NOT NULL;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_finished CHECK (state = 'done');
