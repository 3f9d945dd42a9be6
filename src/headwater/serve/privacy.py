"""The privacy floor: no served breakdown cell describes fewer than k distinct persons.

Every metric endpoint result, and every result shown to a ``viewer``, goes through
:func:`apply_floor` (k = setting ``serve.k_anonymity``, default 10). A *cell* is one row of
an aggregate: a day × platform × step, a cohort × period, a variant… Its ``persons`` column
(distinct ``person_id``) is the count the rule applies to.

Decision: a cell under the floor is **dropped, row and all**, not shown with its measures
nulled. The breakdown values themselves can identify (a rare property value, an app version
one customer runs), so keeping the row with empty measures would still tell that someone with
that value exists. This is what Google Analytics 4 does with its "data thresholds": rows with
too few users are withheld from the report and the remaining rows may not add up to the
total; its Data API flags such a response with ``subjectToThresholding``
(https://developers.google.com/analytics/devguides/reporting/data/v1/rest/v1beta/ResponseMetaData).
Statistical agencies call it primary cell suppression. Callers report how many cells were withheld (``input rows - output rows``)
so that a dashboard can say so. The floor is a guard against reading individuals off small
groups, not differential privacy: differences between overlapping queries can still narrow a
group down, which is why viewers get no SQL at all.

A ``viewer`` result never holds a person identifier: :func:`viewer_result` refuses one that
has an identifier column (fail closed — a metric that returns one is a bug), then applies
the floor.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import ForbiddenError, InvalidInputError

PERSONS = "persons"

# Columns that hold a person's (tokenised) identifier, or embed one (session_id is
# "person_id:start"). The lake's schemas name identifiers only with these.
IDENTIFIER_COLUMNS = frozenset({
    "person_id", "user_id", "anonymous_id", "previous_id", "group_id", "session_id",
    "id", "id_person_id", "user_person_id",
})


def apply_floor(result: pa.Table | duckdb.DuckDBPyRelation, k: int, persons: str = PERSONS):
    """``result`` without the rows whose ``persons`` column (distinct persons of the cell) is
    below ``k`` or null; same type (an Arrow table, or a lazy DuckDB relation), same columns.
    ``k`` ≤ 1 keeps every row. :class:`InvalidInputError` if ``result`` has no ``persons``
    column: a breakdown whose cell sizes are unknown cannot be shown under a floor."""
    names = result.column_names if isinstance(result, pa.Table) else result.columns
    if persons not in names:
        raise InvalidInputError(f"{persons}: the privacy floor needs a distinct-persons column per cell", field=persons)
    if k <= 1:
        return result
    if isinstance(result, pa.Table):
        # filter() drops nulls too: a cell of unknown size is not shown
        return result.filter(pc.greater_equal(result[persons], k))
    quoted = '"' + persons.replace('"', '""') + '"'
    return result.filter(f"{quoted} >= {int(k)}")


def viewer_result(result: pa.Table, k: int, persons: str = PERSONS) -> pa.Table:
    """``result`` as a ``viewer`` may see it: :class:`ForbiddenError` if it has a column of
    :data:`IDENTIFIER_COLUMNS`, else :func:`apply_floor`."""
    ids = sorted(set(result.column_names) & IDENTIFIER_COLUMNS)
    if ids:
        raise ForbiddenError(f"role viewer: never sees person identifiers ({', '.join(ids)})", field="role")
    return apply_floor(result, k, persons)
