"""hourly rollups of the calls (kept by the analytics worker); an index for the intent filter

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 18:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa



# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

SUMS = ("duration", "queue_wait", "agent_handle", "sentiment")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "rollup_hours",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("rolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in (
            "calls", "analysed", "with_fallback", "queued", "queue_abandoned")),
        *(column for name in SUMS for column in (
            sa.Column(f"{name}_sum", sa.Float(), nullable=False),
            sa.Column(f"{name}_n", sa.Integer(), nullable=False))),
    )
    op.create_table(
        "rollup_counts",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("kind", sa.String(length=16), primary_key=True),
        sa.Column("key", sa.String(length=64), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    op.create_index("ix_turns_intent_call_id", "turns", ["intent", "call_id"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_turns_intent_call_id", table_name="turns")
    op.drop_table("rollup_counts")
    op.drop_table("rollup_hours")
