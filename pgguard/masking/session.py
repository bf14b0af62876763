"""A session's masking: its clearance, and the catalog as lineage needs it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pgguard.config import Config, RoleConfig
from pgguard.masking.bodies import Routine
from pgguard.masking.lineage import Lineage, Relations, SourceColumn, erased_lineages, lineages
from pgguard.masking.plan import Clearance, MaskingRefused, MaskingRules, clearance_for
from pgguard.masking.results import ResultMasking
from pgguard.masking.system_columns import hidden_columns
from pgguard.policy.catalog import SYSTEM_SCHEMAS, Catalog
from pgguard.policy.classify import Name
from pgguard.policy.guard import Decision, SessionGuard
from pgguard.policy.shapes import Key, shape_of, shared

log = logging.getLogger("pgguard.masking")


def masking_refusal(exc: Exception) -> Decision:
    """The refusal of a statement masking cannot guarantee: its reason, or, for a statement it
    could not analyse at all, a plain one (and the trace in the gateway's log)."""
    refused = exc if isinstance(exc, MaskingRefused) else None
    if refused is None:
        log.warning("masking could not analyse a statement; refused", exc_info=True)
        refused = MaskingRefused("pgguard cannot establish what this statement returns")
    return Decision(False, None, "masking", str(refused),
                    refused.hint or "select the column's masked value, or ask for a role cleared for it")


class MaskingConfig:
    """The [masking] section, compiled once per config."""

    def __init__(self, config: Config) -> None:
        table = config.raw.get("masking", {})
        self.rules = MaskingRules.from_config(table, config.path.parent)
        self.default_detectors: list[str] = list(table.get("detectors", {}).get("text", []))
        # A clearance depends only on the set of roles: compiled once for each.
        self._clearances: dict[tuple[str, ...], Clearance] = {}

    def clearance(self, roles: list[RoleConfig]) -> Clearance:
        key = tuple(role.name for role in roles)
        if key not in self._clearances:
            self._clearances[key] = clearance_for(self.rules, self.default_detectors, roles)
        return self._clearances[key]

    def active_for(self, roles: list[RoleConfig]) -> bool:
        return self.clearance(roles).active

    def for_session(self, roles: list[RoleConfig], guard: SessionGuard,
                    catalog: Callable[[], Catalog]) -> ResultMasking | None:
        """The session's result masking; None when its roles see everything raw."""
        clearance = self.clearance(roles)
        if not clearance.active:
            return None
        return ResultMasking(clearance, SessionRelations(guard, catalog, self.rules).lineages, catalog,
                             lambda: len(guard.search_paths))


_RETRY = "pgguard is reading the catalog again: retry in a moment"

# Statement texts whose lineage a session keeps; all are dropped when there are more.
_KEPT_LINEAGES = 64


class SessionRelations(Relations):
    """Relations as the session's search path resolves them."""

    def __init__(self, guard: SessionGuard, catalog: Callable[[], Catalog], rules: MaskingRules) -> None:
        self.guard = guard
        self.catalog = catalog
        self._sensitive = frozenset(rules.sensitive)
        self.sensitive_relations = {column.relation for column in self._sensitive}
        # Text, and shape key -> (the catalog snapshot and the number of search paths it was traced
        # with, its lineages; for a shape, None where it is traced text by text).
        self._kept: dict[str, tuple[Catalog, int, list[Lineage] | None]] = {}
        self._shaped: dict[bytes, tuple[Catalog, int, list[Lineage] | None]] = {}

    def lineages(self, sql: str) -> list[Lineage]:
        """The lineage of each statement of `sql`, traced once per text, or once per shape where tracing
        reads no constant (shapes.py), for as long as what it depends on stays: the catalog snapshot (the
        very object) and the session's search paths (which only grow). A lineage that met a relation the
        catalog did not know is traced again."""
        shape = shape_of(sql)
        if shape is not None:
            found = self._recall(self._shaped, shape.key,
                                 lambda: shared(shape, lambda tree: erased_lineages(tree, self)))
            if found is not None:
                return found
        return self._recall(self._kept, sql, lambda: lineages(sql, self)) or []

    def _recall(self, kept: dict[Key, tuple[Catalog, int, list[Lineage] | None]], key: Key,
                trace: Callable[[], list[Lineage] | None]) -> list[Lineage] | None:
        catalog, paths = self.catalog(), len(self.guard.search_paths)
        entry = kept.get(key)
        if entry is not None and entry[0] is catalog and entry[1] == paths:
            return entry[2]
        found = trace()
        if found is not None and any(lineage.unresolved for lineage in found):
            return found
        if len(kept) >= _KEPT_LINEAGES:
            kept.clear()
        kept[key] = (catalog, paths, found)
        return found

    def resolve(self, schema: str | None, name: str) -> str | None:
        if self.catalog().behind and not self.guard.may_run_ddl:
            # Another session's DDL may have made the name a view over other columns, or made it a view:
            # read raw until the snapshot shows it (roles that may run DDL: what they make they may read).
            raise MaskingRefused(f"DDL ran since pgguard read the catalog, and it cannot tell what {name} reads"
                                 " until it has read it again", _RETRY)
        known = self.catalog().relation_columns
        candidates = self.guard.resolve(Name(schema, name)) if schema is None else [f"{schema}.{name}"]
        existing = [candidate for candidate in candidates if candidate in known]
        if len(existing) == 1:
            return existing[0]
        # With one search path, the candidates come in its order, and the first that exists is the one;
        # with several, any of them may be.
        several = len(existing) > 1 and len(self.guard.search_paths) > 1
        views = self.catalog().views
        risky = [c for c in (existing or candidates)
                 if c in self.sensitive_relations or hidden_columns(c) or (several and c in views)]
        if risky:
            # The name could be a table with sensitive columns, or a view that may read one, but which
            # one it is cannot be told: fail closed.
            raise MaskingRefused(f"{name} may be {' or '.join(sorted(existing or candidates))}, and pgguard cannot tell"
                                 f" which ({', '.join(risky)} may have masked columns)")
        if not existing:
            # Created since the catalog was read (a view over a sensitive table,
            # made outside the gateway?): have it read again, so that the next
            # statement sees what this one could not.
            self.guard.unknown("relation", Name(schema, name))
            if not self.guard.may_run_ddl:
                # No detector knows another session's statement text: a view over pg_stat_activity that the
                # snapshot does not show yet would return it raw. Roles that may run DDL make tables of their
                # own (temporary ones no snapshot shows) and read them at once: those keep every detector.
                raise MaskingRefused(f"relation {name} is unknown to pgguard, which cannot tell what it may"
                                     " return (created since pgguard read the catalog, or misspelt)",
                                     f"{_RETRY}; check the name")
            return None
        return existing[0]

    def columns(self, relation: str) -> list[str] | None:
        found = self.catalog().relation_columns.get(relation)
        return list(found) if found is not None else None

    def view_definition(self, relation: str) -> str | None:
        return self.catalog().views.get(relation)

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        catalog = self.catalog()
        defined = catalog.operators if operator else catalog.functions
        # What an extension the policy does not trust put in pg_catalog (xml2's xpath_table(), which runs the
        # query it builds from text) is not PostgreSQL's own: pgguard cannot follow it.
        untrusted = [Routine(f"pg_catalog.{name}", "")] if schema in (None, *SYSTEM_SCHEMAS) and \
            self.guard.untrusted_system_member("o" if operator else "f", name) is not None else []
        if schema in SYSTEM_SCHEMAS:
            return untrusted if schema in defined.get(name, ()) else None
        candidates = self.guard.user_defined(Name(schema, name), defined)
        if candidates is None:
            return None
        found = catalog.operator_routines if operator else catalog.routines
        routines: list[Routine] = []
        for candidate in candidates:
            if candidate not in found:  # created since the catalog was read
                return None
            routines.extend(found[candidate])
        return routines + untrusted

    def sensitive(self) -> frozenset[SourceColumn]:
        return self._sensitive

    def trusted(self, routine: Routine) -> bool:
        return self.guard.policy.extensions.trusts(routine.extension, routine.name)
