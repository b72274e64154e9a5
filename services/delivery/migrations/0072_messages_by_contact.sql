-- delivery, issue 18: a contact's messages, newest first, a page at a time
-- (DeliveryService.ListContactMessages, services/delivery/contact_messages.py, the console's
-- contact page), and the erasure of a contact (services/delivery/privacy.py) read the ledger
-- by contact; messages had no index for it. The order is the page's keyset: (claimed_at,
-- message_id) descending, so a page is one index range scan.
-- Its cost on the claims (a group of 500, bench/delivery_claims.py): bench/RESULTS.md, issue 18.
CREATE INDEX messages_by_contact
    ON messages (workspace_id, contact_id, claimed_at DESC, message_id DESC);
