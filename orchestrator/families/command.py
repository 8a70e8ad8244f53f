"""The generic family: every stage is a `command` whose bash body the user writes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from orchestrator.families.base import Family


class CommandSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FAMILY = Family(name="command", settings=CommandSettings, kinds={})
