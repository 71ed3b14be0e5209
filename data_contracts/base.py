"""A table contract: columns, Arrow types, nullability and value checks, declared once.

Arrow enforces the types when a frame is converted (so a float where a string belongs fails loudly);
pandera enforces the values (not null, unique keys, allowed values). `Contract.validate` runs both
and is called at every flow boundary: on what a flow writes and on what a flow reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd
import pandera.pandas as pda
import pyarrow as pa

UTC_TIME = pa.timestamp("us", tz="UTC")  # every time in every table: microseconds, UTC


class ContractError(ValueError):
    """A table does not satisfy its contract; the message names the table and the failing cases."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = True
    isin: tuple[str, ...] | None = None
    doc: str = ""


@dataclass(frozen=True)
class Contract:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = ()
    doc: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns]
        return pa.schema(fields, metadata={"radcap.contract": self.name})

    @property
    def vector_columns(self) -> list[str]:
        """Fixed-size vectors (features): Arrow checks their type and length; pandera skips them."""
        return [c.name for c in self.columns if pa.types.is_fixed_size_list(c.type)]

    @cached_property
    def _pandera(self) -> pda.DataFrameSchema:
        columns = {
            c.name: pda.Column(
                dtype=None,  # Arrow has already checked the type
                nullable=c.nullable,
                checks=[pda.Check.isin(list(c.isin))] if c.isin else [],
            )
            for c in self.columns
            if c.name not in self.vector_columns
        }
        return pda.DataFrameSchema(columns, strict=True, ordered=True, unique=list(self.unique) or None, name=self.name)

    def empty(self) -> pd.DataFrame:
        return self.arrow_schema.empty_table().to_pandas()

    def to_arrow(self, frame: pd.DataFrame) -> pa.Table:
        """Convert with the contract's exact types; raise ContractError naming the column on mismatch.

        Schema evolution: a column a later version added is nullable, so a table written before it existed
        reads with that column all null (a missing non-nullable column is an error)."""
        added = [c.name for c in self.columns if c.nullable and c.name not in frame.columns]
        if added:
            frame = frame.assign(**dict.fromkeys(added))
        missing = [c for c in self.column_names if c not in frame.columns]
        extra = [c for c in frame.columns if c not in self.column_names]
        if missing or extra:
            raise ContractError(f"table '{self.name}': missing columns {missing}, unexpected columns {extra}")
        frame = frame[self.column_names]
        try:
            table = pa.Table.from_pandas(frame, schema=self.arrow_schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ContractError(f"table '{self.name}': wrong column type: {exc}") from exc
        except ValueError as exc:  # Arrow's check of non-nullable fields
            raise ContractError(f"table '{self.name}': {exc}") from exc
        return table.replace_schema_metadata(self.arrow_schema.metadata)

    def validate(self, data: pd.DataFrame | pa.Table) -> pa.Table:
        """Type-check through Arrow, then value-check with pandera; return the Arrow table."""
        table = data if isinstance(data, pa.Table) else self.to_arrow(data)
        if not table.schema.remove_metadata().equals(self.arrow_schema.remove_metadata()):
            if self.vector_columns:  # no pandas round trip for vectors: the types must already match
                raise ContractError(f"table '{self.name}': schema {table.schema} != contract {self.arrow_schema}")
            table = self.to_arrow(table.to_pandas())
        try:
            self._pandera.validate(table.drop_columns(self.vector_columns).to_pandas(), lazy=True)
        except pda.errors.SchemaErrors as exc:
            cases = exc.failure_cases[["column", "check", "failure_case"]].head(10)
            raise ContractError(
                f"table '{self.name}' breaks its contract ({len(exc.failure_cases)} failures), first ones:\n"
                + cases.to_string(index=False)
            ) from exc
        return table

    def describe(self) -> str:
        """Markdown table of the columns, for docs and `radcap contracts`."""
        lines = [f"### `{self.name}`", "", self.doc, "", "| column | type | nullable | meaning |", "|---|---|---|---|"]
        for c in self.columns:
            allowed = f" One of {', '.join(c.isin)}." if c.isin else ""
            lines.append(f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.doc}{allowed} |")
        if self.unique:
            lines.append(f"\nUnique key: {', '.join(self.unique)}.")
        return "\n".join(lines)
