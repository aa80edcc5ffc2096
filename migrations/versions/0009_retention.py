"""when the retention policy deleted a call's recording and its transcript

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 21:40:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("recording_deleted_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("transcript_deleted_at", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("transcript_deleted_at")
        batch.drop_column("recording_deleted_at")
