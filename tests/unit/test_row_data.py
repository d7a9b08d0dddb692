"""Row values quoted by PostgreSQL's errors are withheld from what a restore failure records
(issue #17 item 7): backupd.redact.withhold_row_data on the messages PostgreSQL writes."""

from __future__ import annotations

import pytest

from backupd.redact import withhold_row_data


@pytest.mark.parametrize(("text", "kept", "withheld"), [
    ('new row for relation "users" violates check constraint "c" (Failing row contains (5, a@x.io, (b)).)',
     'check constraint "c" (Failing row contains (row data withheld)', "a@x.io"),
    ('duplicate key value violates unique constraint "users_pkey" (Key (id, region)=(5, e)u) already exists.)',
     "Key (id, region)=(…) already exists.", "e)u"),
    ('violates foreign key constraint "f" (Key (user_id)=(a@x.io) is not present in table "users".)',
     'Key (user_id)=(…) is not present in table "users"', "a@x.io"),
    ('psql failed: ERROR: bad\nCONTEXT:  COPY users, line 3: "1\ta@x.io\tAda"', "COPY users, line 3: (row data withheld)",
     "a@x.io"),
    ('CONTEXT:  COPY users, line 3, column email: "a@x.io"', "column email: (row data withheld)", "a@x.io"),
    ('invalid input syntax for type uuid: "a@x.io"', "invalid input syntax for type uuid: (row data withheld)",
     "a@x.io"),
    ('no partition of relation "users" found for row (Partition key of the failing row contains (region) = (a@x.io).)',
     "failing row contains (region) = (row data withheld)", "a@x.io"),
])
def test_quoted_values_are_withheld_and_names_kept(text, kept, withheld):
    result = withhold_row_data(text)
    assert kept in result and withheld not in result


def test_messages_without_row_data_are_unchanged():
    text = 'restoring tasks failed, target unchanged: null value in column "title" violates not-null constraint'
    assert withhold_row_data(text) == text
