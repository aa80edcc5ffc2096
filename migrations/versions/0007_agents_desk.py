"""agents' desk: who took a call, its disposition and notes; queue and handle figures

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 15:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("agent", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("disposition", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("agent_notes", sa.Text(), nullable=True))
        batch.create_index("ix_calls_agent", ["agent"])
    with op.batch_alter_table("call_analyses") as batch:
        batch.add_column(sa.Column("queue_outcome", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("queue_wait_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("agent_handle_s", sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("call_analyses") as batch:
        batch.drop_column("agent_handle_s")
        batch.drop_column("queue_wait_s")
        batch.drop_column("queue_outcome")
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_agent")
        batch.drop_column("agent_notes")
        batch.drop_column("disposition")
        batch.drop_column("agent")
