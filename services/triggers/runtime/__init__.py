"""The engine's runtime: what turns events and timers into runs, steps and messages
(docs/triggers.md, "How the engine runs"). ``observed`` reads envelopes (pure), ``facts``
keeps what the engine knows of contacts, ``runs`` starts, ends and advances runs,
``timers`` wakes them, ``caps`` knows each workspace's frequency cap."""
