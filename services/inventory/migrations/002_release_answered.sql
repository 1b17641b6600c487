-- A ReleaseInventory command gets one InventoryReleased, even when nothing was reserved:
-- for a REJECTED reservation the answer is remembered here, so a batch reads it with the
-- reservation instead of looking through the outbox. Rows answered before this column
-- existed are found the old way, once.
ALTER TABLE reservations ADD COLUMN release_answered boolean NOT NULL DEFAULT false;

UPDATE reservations r SET release_answered = true
 WHERE r.status = 'REJECTED'
   AND EXISTS (SELECT 1 FROM outbox o WHERE o.subject = r.order_id::text AND o.type = 'InventoryReleased');
