"""Statements are templates: identifiers quoted when rendered, values always parameters."""

from __future__ import annotations

from phaseledger.store.sql import Literal, quote, render, sqlite
from phaseledger.store.sql import postgres as pg


def test_identifiers_are_quoted_and_qualified() -> None:
    assert quote("runs") == '"runs"'
    assert quote(("my schema", 'odd"name')) == '"my schema"."odd""name"'
    assert quote(Literal("it's")) == "'it''s'"


def test_parameters_are_spelled_for_each_driver() -> None:
    template = "SELECT * FROM {t} WHERE a = %(a)s AND b = %(b)s"
    assert render(template, t="x") == 'SELECT * FROM "x" WHERE a = %(a)s AND b = %(b)s'
    assert render(template, "named", t="x") == 'SELECT * FROM "x" WHERE a = :a AND b = :b'


def test_each_backend_renders_its_own_statements() -> None:
    assert pg.sql(pg.COUNT_AFTER, "s", events="e").startswith('SELECT COUNT(*) AS n FROM "s"."e"')
    assert ":run_id" in sqlite.LEASE_ROW and "%(" not in sqlite.LEASE_ROW
    assert sqlite.json_list(["a", "b"]) == '["a", "b"]'
