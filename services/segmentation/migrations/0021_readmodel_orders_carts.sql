-- Issue 13, the apply path: what rules read about orders, and what keeps a cart exact when
-- its events arrive out of order.

-- The categories of an order's line items ({"events": "order", "where": {"category": ...}}),
-- and the cart it came from (an order clears the profile's cart with that id, whenever the
-- two arrive).
ALTER TABLE orders
    ADD COLUMN categories text[] NOT NULL DEFAULT '{}',
    ADD COLUMN cart_id    text   NOT NULL DEFAULT '';

-- Every order of a contact, whatever its status: the aggregates are recomputed per contact
-- after its orders change, and a late CartUpdated looks for an order placed after it.
CREATE INDEX orders_by_contact ON orders (workspace_id, contact_id);


-- Every shop event moves a profile's last visit forward: room on each page lets PostgreSQL
-- write the new row version beside the old one without touching the index (a HOT update).
ALTER TABLE profiles SET (fillfactor = 80);
