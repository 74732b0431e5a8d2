"""Imports every module that declares tables, so ``Base.metadata`` is complete (for Alembic)."""

from mailserver.db import models
from mailserver.db.models import Base
from mailserver.queue import models as queue_models

__all__ = ["Base", "models", "queue_models"]
