from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from nudge.shop.v1 import shop_pb2

from services.common.errors import Validator


def test_every_string_in_a_message_is_checked_with_its_path() -> None:
    v = Validator()
    event = shop_pb2.ShopEvent(
        order_placed=shop_pb2.OrderPlaced(
            order_id="a\x00b",
            items=[shop_pb2.LineItem(name="ok"), shop_pb2.LineItem(name="x" * 11)],
        )
    )
    v.strings(event, "event", max_length=10)
    contact = contacts_pb2.Contact(attributes={"k": "v\x00"}, tags=["fine", "t\x00"])
    v.strings(contact, "contact", max_length=10)
    assert [(x.field, x.description) for x in v.violations] == [
        ("event.order_placed.order_id", "contains a NUL character"),
        ("event.order_placed.items[1].name", "longer than 10 characters"),
        ("contact.attributes[k]", "contains a NUL character"),
        ("contact.tags[1]", "contains a NUL character"),
    ]


def test_clean_messages_pass() -> None:
    v = Validator()
    v.strings(shop_pb2.ShopEvent(searched=shop_pb2.Searched(query="tea")), "event", 10)
    assert v.violations == []


def test_out_of_range_timestamps_are_violations() -> None:
    v = Validator()
    assert v.timestamp(Timestamp(seconds=10**12), "at") is None
    assert [x.field for x in v.violations] == ["at"]
