"""What the campaigns service's parts are built from: the pool, the channels to the services it
asks, and its settings. One object, opened once in bootstrap.py, so that each part (audience
and fan-out, content, lifecycle, report) builds its own adapters from it without the
composition root knowing their insides."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import grpc

from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.config import Settings


@dataclass(frozen=True)
class Ports:
    settings: Settings
    pool: asyncpg.Pool
    contacts: grpc.aio.Channel
    segmentation: grpc.aio.Channel
    delivery: grpc.aio.Channel
    segments: SegmentCatalogue
