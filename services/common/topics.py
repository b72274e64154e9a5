"""Every Kafka topic of DESIGN.md, with its partition count. Created explicitly at start-up
(Tansu auto-creates with its own defaults; production brokers should not auto-create)."""

CONTACTS_EVENTS = "contacts.events.v1"
SHOP_EVENTS = "shop.events.v1"
SEGMENT_MEMBERSHIP = "segments.membership.v1"
DELIVERY_REQUESTS = "delivery.requests.v1"
DELIVERY_EVENTS = "delivery.events.v1"
TRACKING_EVENTS = "tracking.events.v1"
# Records a consumer gave up on (services.common.consumer), with why, for an operator to
# inspect and replay.
DEAD_LETTER = "nudge.deadletter.v1"

TOPICS: dict[str, int] = {
    CONTACTS_EVENTS: 4,
    SHOP_EVENTS: 4,
    SEGMENT_MEMBERSHIP: 4,
    DELIVERY_REQUESTS: 4,
    DELIVERY_EVENTS: 4,
    TRACKING_EVENTS: 4,
    DEAD_LETTER: 4,
}
