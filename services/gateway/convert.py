"""JSON <-> protobuf, in one place: the routers never touch a protobuf field themselves.

Enums travel as lower-case names without their prefix (``CONSENT_PURPOSE_MARKETING`` <->
``"marketing"``), timestamps as RFC 3339, birthdays as ``YYYY-MM-DD`` or ``--MM-DD``.
Incoming date-times are already in UTC (``schemas.Rfc3339`` converts them, refusing instants
that UTC, and so a protobuf Timestamp, cannot hold).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.campaigns.v1 import campaigns_pb2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.segmentation.v1 import segmentation_pb2
from nudge.shop.v1 import shop_pb2

from services.gateway import schemas

# --- shared -------------------------------------------------------------------------------


def _enum_value(enum: Any, prefix: str, name: str) -> Any:
    """The number of ``name`` in ``enum`` (typed Any: each enum has its own ValueType)."""
    return enum.Value(f"{prefix}{name.upper()}")


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    try:
        return cast(str, enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:  # a value newer than our copy of the contract
        return "unspecified"


def _time(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _strip(prefix: str, field: str) -> str:
    return field.removeprefix(prefix)


# --- contacts -----------------------------------------------------------------------------


def create_contact_request(body: schemas.ContactIn) -> contacts_pb2.CreateContactRequest:
    contact = contacts_pb2.Contact(
        email=body.email,
        external_id=body.external_id or "",
        first_name=body.first_name,
        last_name=body.last_name,
        locale=body.locale,
        time_zone=body.time_zone,
        attributes=body.attributes,
        vip=body.vip,
        tags=body.tags,
    )
    if body.birthday is not None:
        year, month, day = parse_birthday(body.birthday)
        contact.birthday.CopyFrom(contacts_pb2.Date(year=year, month=month, day=day))
    if body.signed_up_at is not None:
        contact.signed_up_at.FromDatetime(body.signed_up_at)
    return contacts_pb2.CreateContactRequest(
        contact=contact,
        consents=[
            _enum_value(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", p) for p in body.consents
        ],
        consent_source=contacts_pb2.CONSENT_SOURCE_API,
        consent_wording=body.consent_wording,
    )


def parse_birthday(text: str) -> tuple[int, int, int]:
    """``"1990-02-28"`` -> (1990, 2, 28); ``"--02-28"`` -> (0, 2, 28). Whether it is a real
    date is the contacts service's call."""
    year, month, day = text.rsplit("-", 2)
    return (0 if year == "-" else int(year)), int(month), int(day)


def format_birthday(date: contacts_pb2.Date) -> str:
    year = f"{date.year:04d}" if date.year else "-"
    return f"{year}-{date.month:02d}-{date.day:02d}"


def contact_field(field: str) -> str:
    """The contacts service names fields of CreateContactRequest (``contact.email``)."""
    return _strip("contact.", field)


def contact_json(c: contacts_pb2.Contact) -> schemas.ContactOut:
    return schemas.ContactOut(
        id=c.id,
        workspace_id=c.workspace_id,
        email=c.email,
        external_id=c.external_id or None,
        first_name=c.first_name,
        last_name=c.last_name,
        locale=c.locale,
        time_zone=c.time_zone,
        birthday=format_birthday(c.birthday) if c.HasField("birthday") else None,
        signed_up_at=_time(c.signed_up_at, c.HasField("signed_up_at")),
        attributes=dict(c.attributes),
        vip=c.vip,
        tags=list(c.tags),
        score=c.score,
        created_at=_time(c.created_at, c.HasField("created_at")),
        updated_at=_time(c.updated_at, c.HasField("updated_at")),
        version=c.version,
    )


def _ref(contact_id: str) -> contacts_pb2.ContactRef:
    return contacts_pb2.ContactRef(contact_id=contact_id)


def update_contact_request(
    contact_id: str, body: schemas.ContactPatchIn
) -> contacts_pb2.UpdateContactRequest | None:
    """The UpdateContact call for a JSON merge patch (RFC 7396): each member given becomes a
    mask path, ``attributes`` members ``attributes.<name>`` (null: absent from the patch,
    so removed), ``"attributes": null`` the path ``attributes`` with none. None when the
    patch changes nothing (``{"attributes": {}}``)."""
    patch = contacts_pb2.Contact()
    paths: list[str] = []
    for name in sorted(body.model_fields_set):
        value = getattr(body, name)
        if name == "attributes":
            if value is None:
                paths.append("attributes")
                continue
            for key, item in sorted(value.items()):
                paths.append(f"attributes.{key}")
                if item is not None:
                    patch.attributes[key] = item
            continue
        paths.append(name)
        if value is None:
            # Left at its default in the patch: empty text, false, no tags, no birthday.
            continue
        if name == "birthday":
            year, month, day = parse_birthday(value)
            patch.birthday.CopyFrom(contacts_pb2.Date(year=year, month=month, day=day))
        elif name == "signed_up_at":
            patch.signed_up_at.FromDatetime(value)
        elif name == "tags":
            patch.tags.extend(value)
        else:
            setattr(patch, name, value)
    if not paths:
        return None
    return contacts_pb2.UpdateContactRequest(
        contact=_ref(contact_id),
        contact_patch=patch,
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def patch_field(field: str) -> str:
    """UpdateContact names ``contact_patch.<field>`` and ``update_mask``; the JSON member."""
    field = field.removeprefix("contact_patch.")
    return "body" if field.startswith("update_mask") else field


def upsert_contact_request(
    external_id: str, body: schemas.ContactUpsertIn
) -> contacts_pb2.UpsertContactRequest:
    contact = contacts_pb2.Contact(
        external_id=external_id,
        email=body.email,
        first_name=body.first_name,
        last_name=body.last_name,
        locale=body.locale,
        time_zone=body.time_zone,
        attributes=body.attributes,
        vip=body.vip,
        tags=body.tags,
    )
    if body.birthday is not None:
        year, month, day = parse_birthday(body.birthday)
        contact.birthday.CopyFrom(contacts_pb2.Date(year=year, month=month, day=day))
    if body.signed_up_at is not None:
        contact.signed_up_at.FromDatetime(body.signed_up_at)
    given = body.model_fields_set - {"consents", "consent_wording"}
    return contacts_pb2.UpsertContactRequest(
        contact=contact,
        update_mask=field_mask_pb2.FieldMask(paths=sorted(given | {"email"})),
        consents=[
            _enum_value(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", p) for p in body.consents
        ],
        consent_source=contacts_pb2.CONSENT_SOURCE_API,
        consent_wording=body.consent_wording,
    )


def upsert_field(field: str) -> str:
    if field == "contact.external_id":
        return "external_id"
    if field.startswith("update_mask"):
        return "body"
    return _strip("contact.", field)


def contact_filter(f: schemas.ContactFilterIn) -> contacts_pb2.ContactFilter:
    out = contacts_pb2.ContactFilter(
        tags_all=f.tags_all,
        tags_any=f.tags_any,
        tags_none=f.tags_none,
        attributes=f.attributes,
        query=f.query,
        contact_ids=f.contact_ids,
    )
    if f.vip is not None:
        out.vip = f.vip
    if f.consent is not None:
        out.consent.purpose = _enum_value(
            contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", f.consent.purpose
        )
        out.consent.state = _enum_value(
            contacts_pb2.ConsentState, "CONSENT_STATE_", f.consent.state
        )
    if f.created_since is not None:
        out.created_since.FromDatetime(f.created_since)
    if f.updated_since is not None:
        out.updated_since.FromDatetime(f.updated_since)
    return out


def tags_json(answer: contacts_pb2.ModifyTagsResponse) -> schemas.TagsChangedOut:
    return schemas.TagsChangedOut(
        contact=contact_json(answer.contact),
        changed=answer.changed,
        duplicate=answer.duplicate,
        version=answer.version,
    )


def attribute_json(a: contacts_pb2.AttributeDefinition) -> schemas.AttributeOut:
    return schemas.AttributeOut(
        name=a.name,
        type=_enum_name(contacts_pb2.AttributeType, "ATTRIBUTE_TYPE_", a.type),
        description=a.description,
        created_at=_time(a.created_at, a.HasField("created_at")),
    )


def define_attribute_request(
    name: str, body: schemas.AttributeIn
) -> contacts_pb2.DefineAttributeRequest:
    return contacts_pb2.DefineAttributeRequest(
        attribute=contacts_pb2.AttributeDefinition(
            name=name,
            type=_enum_value(contacts_pb2.AttributeType, "ATTRIBUTE_TYPE_", body.type),
            description=body.description,
        )
    )


def attribute_field(field: str) -> str:
    if field == "attribute.name":
        return "name"
    return _strip("attribute.", field)


def get_contact_request(contact_id: str) -> contacts_pb2.GetContactRequest:
    return contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(contact_id=contact_id))


def record_consent_request(
    contact_id: str, body: schemas.ConsentIn
) -> contacts_pb2.RecordConsentRequest:
    request = contacts_pb2.RecordConsentRequest(
        contact=contacts_pb2.ContactRef(contact_id=contact_id),
        purpose=_enum_value(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", body.purpose),
        status=_enum_value(contacts_pb2.ConsentStatus, "CONSENT_STATUS_", body.status),
        source=_enum_value(contacts_pb2.ConsentSource, "CONSENT_SOURCE_", body.source),
        wording=body.wording,
        actor=body.actor or "api",
        ip=body.ip,
        user_agent=body.user_agent,
    )
    if body.recorded_at is not None:
        request.recorded_at.FromDatetime(body.recorded_at)
    return request


# --- shop events --------------------------------------------------------------------------


def track_event_request(body: schemas.EventIn) -> shop_pb2.TrackEventRequest:
    ref = body.contact
    if ref.id:
        contact = contacts_pb2.ContactRef(contact_id=ref.id)
    elif ref.external_id:
        contact = contacts_pb2.ContactRef(external_id=ref.external_id)
    else:
        contact = contacts_pb2.ContactRef(email=ref.email or "")
    event = shop_pb2.ShopEvent()
    if body.occurred_at is not None:
        event.occurred_at.FromDatetime(body.occurred_at)
    getattr(event, body.type).CopyFrom(_event_kind(body))
    return shop_pb2.TrackEventRequest(
        idempotency_key=body.idempotency_key, contact=contact, event=event
    )


def _event_kind(body: schemas.EventIn) -> Message:
    """The ShopEvent oneof member named by ``body.type``; field names follow shop.proto."""
    match body:
        case schemas.SignedUpEvent():
            return shop_pb2.SignedUp()
        case schemas.CartUpdatedEvent():
            cart = body.data or schemas.CartUpdatedData()
            return shop_pb2.CartUpdated(
                cart_id=cart.cart_id,
                items=_line_items(cart.items),
                total=_money(cart.total),
                cart_url=cart.cart_url,
            )
        case schemas.OrderPlacedEvent():
            order = body.data or schemas.OrderPlacedData()
            return shop_pb2.OrderPlaced(
                order_id=order.order_id,
                cart_id=order.cart_id,
                items=_line_items(order.items),
                total=_money(order.total),
            )
        case schemas.OrderCancelledEvent():
            return shop_pb2.OrderCancelled(
                order_id=(body.data or schemas.OrderChangedData()).order_id
            )
        case schemas.OrderRefundedEvent():
            return shop_pb2.OrderRefunded(
                order_id=(body.data or schemas.OrderChangedData()).order_id
            )
        case schemas.PageViewedEvent():
            page = body.data or schemas.PageViewedData()
            return shop_pb2.PageViewed(
                url=page.url, product_id=page.product_id, category=page.category
            )
        case schemas.SearchedEvent():
            return shop_pb2.Searched(query=(body.data or schemas.SearchedData()).query)
        case schemas.LoginFailedEvent():
            return shop_pb2.LoginFailed(
                reset_url=(body.data or schemas.LoginFailedData()).reset_url
            )


def _money(money: schemas.Money | None) -> shop_pb2.Money | None:
    if money is None:
        return None
    return shop_pb2.Money(amount_minor=money.amount_minor, currency=money.currency)


def _line_items(items: list[schemas.LineItem]) -> list[shop_pb2.LineItem]:
    return [
        shop_pb2.LineItem(
            product_id=item.product_id,
            name=item.name,
            category=item.category,
            quantity=item.quantity,
            unit_price=_money(item.unit_price),
        )
        for item in items
    ]


def event_field(field: str) -> str:
    """The contacts service names fields of TrackEventRequest: ``event.kind`` is the JSON
    ``type``, ``event.occurred_at`` is top-level, anything else inside ``event`` is ``data``."""
    if field == "event.kind":
        return "type"
    if field == "event.occurred_at":
        return "occurred_at"
    if field.startswith("event."):
        _, _, rest = field.partition(".")
        kind, _, inner = rest.partition(".")
        return f"data.{inner}" if kind in schemas.EVENT_TYPES and inner else f"data.{rest}"
    if field.startswith("contact."):
        return "contact"
    return field


def event_accepted_json(answer: shop_pb2.TrackEventResponse) -> schemas.EventAccepted:
    return schemas.EventAccepted(
        event_id=answer.event_id, duplicate=answer.duplicate, contact_id=answer.contact_id
    )


# --- segments -----------------------------------------------------------------------------


def rule_text(rule: dict[str, Any]) -> str:
    """A rule object of a request as the JSON text SegmentService takes."""
    return json.dumps(rule, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _rule_object(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def segment_json(s: segmentation_pb2.Segment) -> schemas.SegmentOut:
    return schemas.SegmentOut(
        id=s.id,
        name=s.name,
        kind=_enum_name(segmentation_pb2.SegmentKind, "SEGMENT_KIND_", s.kind),
        description=s.description,
        rule=_rule_object(s.rule),
        version=s.version,
        created_at=_time(s.created_at, s.HasField("created_at")),
        updated_at=_time(s.updated_at, s.HasField("updated_at")),
        depends_on=list(s.depends_on),
    )


def count_segment_request(
    segment_id: str, as_of: datetime | None
) -> segmentation_pb2.CountSegmentRequest:
    request = segmentation_pb2.CountSegmentRequest(segment_id=segment_id)
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    return request


def segment_count_json(
    segment_id: str, answer: segmentation_pb2.CountSegmentResponse
) -> schemas.SegmentCount:
    return schemas.SegmentCount(
        segment_id=segment_id,
        count=answer.count,
        as_of=_time(answer.as_of, answer.HasField("as_of")),
        count_30_days_ago=answer.earlier_count if answer.HasField("earlier_count") else None,
        count_30_days_ago_day=(
            answer.earlier_day.ToDatetime(UTC).date() if answer.HasField("earlier_day") else None
        ),
    )


def update_segment_request(
    segment_id: str, body: schemas.SegmentPatchIn, expected_version: int
) -> segmentation_pb2.UpdateSegmentRequest:
    request = segmentation_pb2.UpdateSegmentRequest(
        segment_id=segment_id, expected_version=expected_version
    )
    for field in sorted(body.model_fields_set):
        request.update_mask.paths.append(field)
    if body.name is not None:
        request.name = body.name
    if body.description is not None:
        request.description = body.description
    if body.rule is not None:
        request.rule = rule_text(body.rule)
    return request


def preview_json(answer: segmentation_pb2.PreviewSegmentResponse) -> schemas.SegmentPreview:
    return schemas.SegmentPreview(
        members=[
            schemas.MemberPreviewOut(
                contact_id=m.contact_id,
                email=m.email,
                first_name=m.first_name,
                last_name=m.last_name,
                last_order_at=_time(m.last_order_at, m.HasField("last_order_at")),
                total_spent=[
                    schemas.MoneyOut(amount_minor=t.amount_minor, currency=t.currency)
                    for t in m.total_spent
                ],
                orders=m.orders,
                tags=list(m.tags),
                vip=m.vip,
            )
            for m in answer.members
        ],
        count=answer.count,
        as_of=answer.as_of.ToDatetime(tzinfo=UTC),
    )


def rule_node_json(node: segmentation_pb2.RuleNodeResult) -> schemas.RuleNodeOut:
    return schemas.RuleNodeOut(
        path=node.path,
        kind=node.kind,
        held=node.held,
        summary=node.summary,
        observed=dict(node.observed),
        children=[rule_node_json(c) for c in node.children],
    )


def overlap_json(answer: segmentation_pb2.SegmentOverlapResponse) -> schemas.OverlapOut:
    n = len(answer.segment_ids)
    counts = list(answer.counts)
    return schemas.OverlapOut(
        segment_ids=list(answer.segment_ids),
        sizes=list(answer.sizes),
        counts=[counts[i * n : (i + 1) * n] for i in range(n)],
        union_count=answer.union_count,
        as_of=answer.as_of.ToDatetime(tzinfo=UTC),
    )


# --- campaigns ----------------------------------------------------------------------------


_PURPOSES = {"marketing": 1, "targeted_messages": 2}
_CAP_ACTIONS = {"skip": 1, "defer": 2}
_METRICS = {"unique_human_clicks": 1, "revenue": 2}


def ab_test_proto(ab: schemas.AbTestIn) -> campaigns_pb2.AbTest:
    out = campaigns_pb2.AbTest(
        subjects=ab.subjects,
        sample_percent=ab.sample_percent,
        metric=_METRICS[ab.metric],  # type: ignore[arg-type]
    )
    out.decide_after.FromSeconds(ab.decide_after_s)
    return out


def campaign_fields_proto(body: schemas.CampaignFieldsIn) -> campaigns_pb2.Campaign:
    """The Campaign message carrying the fields of ``body`` beyond name, segments, subject
    and text (CreateCampaignRequest.campaign, UpdateCampaignRequest.campaign)."""
    c = campaigns_pb2.Campaign(
        exclude_segment_ids=body.exclude_segment_ids,
        tags_any=body.tags_any,
        body_html=body.body_html,
        body_markdown=body.body_markdown,
        reply_to=body.reply_to,
        purpose=_PURPOSES[body.purpose],  # type: ignore[arg-type]
        cap_action=_CAP_ACTIONS[body.cap_action],  # type: ignore[arg-type]
        local_time=body.local_time,
        time_zone=body.time_zone,
        holdout_percent=body.holdout_percent,
    )
    if body.ab_test is not None:
        c.ab_test.CopyFrom(ab_test_proto(body.ab_test))
    return c


def create_campaign_request(body: schemas.CampaignIn) -> campaigns_pb2.CreateCampaignRequest:
    return campaigns_pb2.CreateCampaignRequest(
        name=body.name,
        segment_ids=body.segment_ids,
        subject=body.subject,
        body_text=body.body_text,
        campaign=campaign_fields_proto(body),
    )


def campaign_field(field: str) -> str:
    """The campaigns service names its fields as the JSON does, but for the A/B test's
    duration (``decide_after``, seconds in the JSON) and the Campaign message of an update."""
    field = field.removeprefix("campaign.")
    if field == "ab_test.decide_after":
        return "ab_test.decide_after_s"
    return field


def campaign_json(c: campaigns_pb2.Campaign) -> schemas.CampaignOut:
    ab = None
    if c.HasField("ab_test"):
        ab = schemas.AbTestOut(
            subjects=list(c.ab_test.subjects),
            sample_percent=c.ab_test.sample_percent,
            metric=_enum_name(campaigns_pb2.WinnerMetric, "WINNER_METRIC_", c.ab_test.metric),
            decide_after_s=c.ab_test.decide_after.seconds,
            winner=c.ab_test.winner,
            decided_at=_time(c.ab_test.decided_at, c.ab_test.HasField("decided_at")),
        )
    return schemas.CampaignOut(
        id=c.id,
        workspace_id=c.workspace_id,
        name=c.name,
        segment_ids=list(c.segment_ids),
        subject=c.subject,
        body_text=c.body_text,
        status=_enum_name(campaigns_pb2.CampaignStatus, "CAMPAIGN_STATUS_", c.status),
        created_at=_time(c.created_at, c.HasField("created_at")),
        scheduled_at=_time(c.scheduled_at, c.HasField("scheduled_at")),
        exclude_segment_ids=list(c.exclude_segment_ids),
        tags_any=list(c.tags_any),
        body_html=c.body_html,
        body_markdown=c.body_markdown,
        reply_to=c.reply_to,
        purpose=_enum_name(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", c.purpose),
        cap_action=_enum_name(campaigns_pb2.CapAction, "CAP_ACTION_", c.cap_action),
        local_time=c.local_time,
        time_zone=c.time_zone,
        ab_test=ab,
        holdout_percent=c.holdout_percent,
        updated_at=_time(c.updated_at, c.HasField("updated_at")),
        started_at=_time(c.started_at, c.HasField("started_at")),
        finished_at=_time(c.finished_at, c.HasField("finished_at")),
        status_reason=c.status_reason,
    )


def list_campaigns_field(field: str) -> str:
    """ListCampaigns' fields (``page_size``, ``page_token``) are the route's query
    parameters, named as the gateway's own validation names them."""
    return f"query.{field}"


# --- messages -----------------------------------------------------------------------------


def message_story_json(
    story: delivery_pb2.MessageStory, jaeger_url: str
) -> schemas.MessageStoryOut:
    """The story of a mail (DeliveryService.ExplainMessage), with the link to its trace."""
    status = _enum_name(delivery_pb2.MessageStatus, "MESSAGE_STATUS_", story.status)
    trace_url = f"{jaeger_url.rstrip('/')}/trace/{story.trace_id}" if story.trace_id else ""
    return schemas.MessageStoryOut(
        message_id=story.message_id,
        status=status,
        detail=story.detail,
        updated_at=_time(story.updated_at, story.HasField("updated_at")),
        contact_id=story.contact_id,
        requested_at=_time(story.requested_at, story.HasField("requested_at")),
        origin=schemas.MessageOriginOut(
            kind=_enum_name(delivery_pb2.MessageKind, "MESSAGE_KIND_", story.kind),
            campaign_id=story.campaign_id,
            workflow_id=story.workflow_id,
            run_id=story.run_id,
            step_id=story.step_id,
        ),
        eligibility=schemas.EligibilityOut(
            checked=story.eligibility.checked,
            eligible=story.eligibility.eligible,
            purpose=_enum_name(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", story.purpose),
            reason=story.eligibility.reason,
            at=_time(story.eligibility.at, story.eligibility.HasField("at")),
        ),
        attempts=story.attempts,
        claimed_at=_time(story.claimed_at, story.HasField("claimed_at")),
        next_attempt_at=_time(story.next_attempt_at, story.HasField("next_attempt_at")),
        stages=[
            schemas.MessageStageOut(
                at=_time(s.at, s.HasField("at")),
                status=_enum_name(delivery_pb2.MessageStatus, "MESSAGE_STATUS_", s.status),
                detail=s.detail,
                attempt=s.attempt,
                next_attempt_at=_time(s.next_attempt_at, s.HasField("next_attempt_at")),
            )
            for s in story.stages
        ],
        tracking=[
            schemas.TrackingEventOut(
                at=_time(t.at, t.HasField("at")),
                kind=_enum_name(delivery_pb2.TrackingEventKind, "TRACKING_EVENT_KIND_", t.kind),
                machine=t.machine,
                machine_reason=t.machine_reason,
                url=t.url,
            )
            for t in story.tracking
        ],
        trace=schemas.MessageTraceOut(
            trace_id=story.trace_id,
            url=trace_url,
            command=f"nudge trace {story.trace_id}" if story.trace_id else "",
        ),
    )


def contact_messages_json(
    answer: delivery_pb2.ListContactMessagesResponse,
) -> schemas.ContactMessageList:
    """A page of a contact's messages (DeliveryService.ListContactMessages), with statuses
    and kinds spelled as the message routes spell them."""
    return schemas.ContactMessageList(
        messages=[
            schemas.ContactMessageOut(
                message_id=m.message_id,
                kind=_enum_name(delivery_pb2.MessageKind, "MESSAGE_KIND_", m.kind),
                campaign_id=m.campaign_id,
                workflow_id=m.workflow_id,
                status=_enum_name(delivery_pb2.MessageStatus, "MESSAGE_STATUS_", m.status),
                detail=m.detail,
                attempts=m.attempts,
                claimed_at=_time(m.claimed_at, m.HasField("claimed_at")),
                updated_at=_time(m.updated_at, m.HasField("updated_at")),
                human_opens=m.human_opens,
                machine_opens=m.machine_opens,
                human_clicks=m.human_clicks,
                machine_clicks=m.machine_clicks,
            )
            for m in answer.messages
        ],
        next_page_token=answer.next_page_token,
    )


def message_status_json(answer: delivery_pb2.GetMessageStatusResponse) -> schemas.MessageStatusOut:
    return schemas.MessageStatusOut(
        message_id=answer.message_id,
        status=_enum_name(delivery_pb2.MessageStatus, "MESSAGE_STATUS_", answer.status),
        detail=answer.detail,
        updated_at=_time(answer.updated_at, answer.HasField("updated_at")),
    )
