"""Which delivery requests can be acted on at all, in the contract's own names.

A request whose purpose or kind is unset (``*_UNSPECIFIED``) or a number this build does not
know (a newer producer) can never be delivered correctly: consent is checked per purpose,
and the kind decides whether an unsubscribe link is added. No retry fixes it.
"""

from __future__ import annotations

from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2

TRANSACTIONAL_PURPOSE = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
PURPOSES = frozenset(
    {
        contacts_pb2.CONSENT_PURPOSE_MARKETING,
        contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
    }
)
KINDS = frozenset(
    {
        delivery_pb2.MESSAGE_KIND_TRANSACTIONAL,
        delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        delivery_pb2.MESSAGE_KIND_AUTOMATION,
        # A campaign's test send: handled on its own path (handlers.deliver_test).
        delivery_pb2.MESSAGE_KIND_TEST,
    }
)


def is_actionable(purpose: int, kind: int) -> bool:
    """Both the purpose and the kind are values the contract defines (not UNSPECIFIED)."""
    return purpose in PURPOSES and kind in KINDS
