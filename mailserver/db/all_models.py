"""Imports every module that declares tables, so ``Base.metadata`` is complete (for Alembic)."""

from directory import models as directory_models
from mailserver import api_models, conversation_models, large_file_models, mdn_models
from mailserver.db import models
from mailserver.db.models import Base
from mailserver.queue import models as queue_models
from mailserver.store import identity as identity_models
from smime import models as smime_models

__all__ = [
    "Base",
    "api_models",
    "conversation_models",
    "directory_models",
    "identity_models",
    "large_file_models",
    "mdn_models",
    "models",
    "queue_models",
    "smime_models",
]
