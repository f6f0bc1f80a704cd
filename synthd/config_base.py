"""What every section of the config shares: frozen models that refuse unknown keys, and
the constrained numbers most keys are. Pure."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Frozen(BaseModel):
    """A config section: immutable once loaded; a key it does not know is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
