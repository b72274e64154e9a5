"""Workflows: which customer action starts which message. Pure rules, no I/O.

Only the welcome letter exists in the skeleton; the workflow engine (waits, conditions,
durable timers, cart abandonment, versions, drafts) comes with the trigger-engine issue and
replaces the table below with published workflow versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from nudge.shop.v1 import shop_pb2


@dataclass(frozen=True)
class Template:
    subject: str
    body_text: str


@dataclass(frozen=True)
class Workflow:
    id: str
    name: str
    trigger: str  # the ShopEvent kind that starts it
    template: Template
    once_per_contact: bool


WELCOME = Workflow(
    id="welcome",
    name="Welcome letter",
    trigger="signed_up",
    template=Template(
        subject="Welcome to {{ workspace.name }}",
        body_text=(
            "Hi {{ contact.first_name or 'there' }},\n\n"
            "thank you for signing up at {{ workspace.name }}. We are glad you are here.\n"
        ),
    ),
    once_per_contact=True,
)

BUILT_IN: tuple[Workflow, ...] = (WELCOME,)


@dataclass(frozen=True)
class StartRun:
    """Start ``workflow`` for a contact; ``run_key`` is unique per allowed run."""

    workflow: Workflow
    run_key: str


def runs_started_by(event: shop_pb2.ShopEvent, event_id: str) -> list[StartRun]:
    kind = event.WhichOneof("kind")
    return [
        StartRun(
            workflow=w,
            run_key=f"{w.id}/{event.contact_id}"
            if w.once_per_contact
            else f"{w.id}/{event.contact_id}/{event_id}",
        )
        for w in BUILT_IN
        if w.trigger == kind
    ]
