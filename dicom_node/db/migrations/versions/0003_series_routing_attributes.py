"""series: the attributes routing rules match on

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("sop_class_uid", sa.String(length=64)),
    ("series_description", sa.String(length=64)),
    ("body_part", sa.String(length=16)),
    ("image_type", sa.String(length=128)),
    ("slice_thickness_mm", sa.Float()),
    ("orientation", sa.String(length=8)),
)


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
