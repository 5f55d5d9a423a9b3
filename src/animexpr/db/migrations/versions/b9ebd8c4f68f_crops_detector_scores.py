"""crops: each detector's own score (detector_scores)

Revision ID: b9ebd8c4f68f
Revises: 3b3525d84a54
Create Date: 2026-12-07 00:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b9ebd8c4f68f"
down_revision: str | None = "3b3525d84a54"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("crops", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detector_scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crops", schema=None) as batch_op:
        batch_op.drop_column("detector_scores")
