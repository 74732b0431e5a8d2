"""Imports every module that declares tables, so ``Base.metadata`` is complete (for Alembic)."""

from mailserver.db import models
from mailserver.db.models import Base

__all__ = ["Base", "models"]
