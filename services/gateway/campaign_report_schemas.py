"""JSON of a campaign's report and call list (services/gateway/entrypoints/campaign_report.py):
the CampaignReport and EngagedContact messages of the campaigns contract, field for field."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from services.gateway.schemas import ResponseModel


class EngagementOut(ResponseModel):
    unique_human: int = Field(description="Contacts who opened (clicked) at least once.")
    unique_machine: int = Field(description="Contacts whose mail a proxy or scanner opened.")
    total_human: int = Field(
        description="Events; for opens, pixel loads plus one for each person who clicked and"
        " never loaded the pixel (a click proves the open), so never below unique_human."
    )
    total_machine: int = Field(description="Events.")
    unique_human_rate: float = Field(description="unique_human / delivered; 0 when none.")


class MoneyOut(ResponseModel):
    amount_minor: int = Field(description="In the currency's minor unit (cents).")
    currency: str


class AttributionOut(ResponseModel):
    orders: int = Field(description="Orders within 5 days of a human open or click.")
    revenue: list[MoneyOut] = Field(description="One entry per currency.")


class ExcludedOut(ResponseModel):
    reason: str
    count: int


class VariantReportOut(ResponseModel):
    variant: int = Field(description="The A/B variant from 0; -1 the winner's send to the rest.")
    subject: str
    sent: int
    delivered: int
    opened: EngagementOut
    clicked: EngagementOut
    orders: AttributionOut


class HoldoutOut(ResponseModel):
    contacts: int
    orders: AttributionOut
    order_rate: float
    lift: float = Field(description="Recipients' order rate / the hold-out's - 1; 0 undefined.")


class CampaignReportOut(ResponseModel):
    campaign_id: str
    status: str
    audience: int
    excluded: list[ExcludedOut]
    sent: int
    delivered: int
    deferred: int
    bounced: int
    complained: int
    unknown: int
    failed: int
    skipped: int
    opened: EngagementOut
    clicked: EngagementOut
    unsubscribed: int
    delivery_rate: float
    bounce_rate: float
    complaint_rate: float
    unsubscribe_rate: float
    click_to_open_rate: float
    orders: AttributionOut
    variants: list[VariantReportOut]
    holdout: HoldoutOut | None
    final: bool = Field(description="Sent, and no message still waits for an outcome.")
    as_of: datetime | None


class EngagedContactOut(ResponseModel):
    contact_id: str
    email: str
    first_name: str
    last_name: str
    first_opened_at: datetime | None = Field(
        description="The first pixel load or click, the earlier (a click proves the open)."
    )
    first_clicked_at: datetime | None
    clicks: int


class EngagedContactList(ResponseModel):
    contacts: list[EngagedContactOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")
