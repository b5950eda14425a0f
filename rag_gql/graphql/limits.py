"""GraphQL abuse limits (OWASP GraphQL cheat sheet), checked before any resolver runs.

The first limit an operation crosses rejects it whole, with no `data` and one error whose
`extensions.code` names the limit:

=========================  ================================================================
`QUERY_TOO_LARGE`          more than `GRAPHQL_MAX_LENGTH` characters, or more than
                           `GRAPHQL_MAX_TOKENS` lexical tokens or comments (the parser stops
                           reading at the limit)
`INTROSPECTION_DISABLED`   `__schema` or `__type` while `GRAPHQL_INTROSPECTION` is off
                           (`__typename` is always allowed)
`QUERY_TOO_DEEP`           fields nested deeper than `GRAPHQL_MAX_DEPTH` (`{ me { id } }` is 2)
`TOO_MANY_ALIASES`         more than `GRAPHQL_MAX_ALIASES` aliased fields, a fragment's
                           counted once per spread
`QUERY_TOO_COSTLY`         an estimated cost above `GRAPHQL_MAX_COST` (below)
=========================  ================================================================

Between the alias and cost checks the spec's validation runs, its "Did you mean ...?"
suggestions left out unless `GRAPHQL_SUGGESTIONS` is on (they let a stranger map a schema
whose introspection is off); its errors keep `GRAPHQL_VALIDATION_FAILED`. Introspection fields
are not counted for depth or cost: graphql-core's `MaxIntrospectionDepthRule` (part of the
spec rules it runs) already refuses the cyclic `fields { type { fields ... } }` queries.

Cost is an estimate of the fields resolved: each field costs 1, and a list field's selection
costs as many times as the list may hold items. A list's size is the `first` or `k` argument
of the list field itself or of its parent (a connection's `first` sizes its `edges`;
`ask(k:)` its `sources`), from the query, its variables or the schema default; a list with no
such argument counts as `DEFAULT_LIST_SIZE` items. A size above what the server accepts
(`SEARCH_MAX_K` for `k`, `MAX_PAGE_SIZE` for `first`) counts as that maximum: the resolver
refuses it with `BAD_USER_INPUT` before doing any work, which says more than a cost error.
`search(k: 50) { text document { id } }` costs 1 + 50 * (1 + 1 + 1) = 151.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    validate,
    value_from_ast_untyped,
)
from graphql.pyutils import Undefined
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from rag_gql.config import Settings
from rag_gql.services.documents import MAX_PAGE_SIZE

DEFAULT_LIST_SIZE = 10
"""Items assumed for a list field that takes no `first` or `k` (members, messages, ...)."""
SIZE_ARGUMENTS = ("first", "k")
INTROSPECTION_FIELDS = frozenset({"__schema", "__type"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one server; see the module docstring for what each bounds."""

    max_length: int
    max_tokens: int
    max_depth: int
    max_aliases: int
    max_cost: int
    introspection: bool
    suggestions: bool
    max_sizes: tuple[tuple[str, int], ...] = (("first", MAX_PAGE_SIZE), ("k", 50))
    """The largest `first` and `k` the resolvers accept; larger ones count as these."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The `GRAPHQL_*` settings."""
        return cls(
            max_length=settings.graphql_max_length,
            max_tokens=settings.graphql_max_tokens,
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_cost=settings.graphql_max_cost,
            introspection=settings.graphql_introspection,
            suggestions=settings.graphql_suggestions,
            max_sizes=(("first", MAX_PAGE_SIZE), ("k", settings.search_max_k)),
        )


@dataclass
class CheckedDocuments:
    """The parsed documents that passed the shape limits and the spec's validation, by query
    text, the `maxsize` most recently used kept (LRU). A query seen again skips parsing and
    validation (about a sixth of the server's CPU under load): only its cost, which depends
    on its variables, is estimated again. Documents that failed are not kept, so a client
    sending new texts can only make the server do the work it would do anyway.

    Like Strawberry's `ParserCache` and `ValidationCache`, but keyed by the text and kept
    per schema, since what passes depends on the limits.
    """

    maxsize: int = 512
    _documents: OrderedDict[str, DocumentNode] = field(default_factory=OrderedDict)

    def get(self, query: str) -> DocumentNode | None:
        """The document `query` parsed to when it last passed, else None."""
        document = self._documents.get(query)
        if document is not None:
            self._documents.move_to_end(query)
        return document

    def add(self, query: str, document: DocumentNode) -> None:
        """Keeps `document` as `query`'s, dropping the least recently used beyond `maxsize`."""
        self._documents[query] = document
        self._documents.move_to_end(query)
        while len(self._documents) > self.maxsize:
            self._documents.popitem(last=False)


def limit_error(code: str, message: str) -> GraphQLError:
    """A rejection the client sees as `message` with `extensions.code` = `code`."""
    return GraphQLError(message, extensions={"code": code})


class QueryLimits(SchemaExtension):
    """Strawberry schema extension enforcing `limits` on every operation (HTTP and WebSocket).

    It takes over validation: Strawberry skips its own when an extension has set
    `pre_execution_errors`, so the spec's rules run here once, after the cheap checks.
    Documents that passed are remembered in `checked` (shared by the schema's operations).
    """

    def __init__(self, limits: Limits, checked: CheckedDocuments | None = None) -> None:
        self.limits = limits
        self.checked = checked if checked is not None else CheckedDocuments()
        self._seen = False

    def on_operation(self) -> Iterator[None]:
        """Sets the parser's limits, so an oversized document is never fully read."""
        # Strawberry passes these to graphql-core's `parse`; its TypedDict predates them.
        options = cast("dict[str, Any]", self.execution_context.parse_options)
        options.update(
            max_source_length=self.limits.max_length,
            max_lexical_tokens=self.limits.max_tokens,
            max_comments=self.limits.max_tokens,
        )
        yield

    def on_parse(self) -> Iterator[None]:
        """Reuses the document of a query that passed before (Strawberry then does not
        parse); gives the parser's size errors their own code and message."""
        ctx = self.execution_context
        if ctx.graphql_document is None and ctx.query:
            document = self.checked.get(ctx.query)
            if document is not None:
                ctx.graphql_document = document
                self._seen = True
        yield
        for error in self.execution_context.pre_execution_errors or ():
            if error.message.endswith("Parsing aborted."):
                error.message = (
                    f"The query is too large: at most {self.limits.max_length} characters "
                    f"and {self.limits.max_tokens} tokens"
                )
                error.extensions = {"code": "QUERY_TOO_LARGE"}

    def on_validate(self) -> Iterator[None]:
        """Runs the limits, then the spec's validation, then the cost estimate."""
        ctx = self.execution_context
        if ctx.pre_execution_errors is None and ctx.graphql_document is not None:
            schema = ctx.schema._schema
            document = ctx.graphql_document
            if self._seen:
                ctx.pre_execution_errors = []
            elif (error := check_shape(document.definitions, self.limits)) is not None:
                ctx.pre_execution_errors = [error]
            else:
                ctx.pre_execution_errors = validate(
                    schema,
                    document,
                    (*ctx.validation_rules, MaybeNullValidationRule, OneOfInputValidationRule),
                    hide_suggestions=not self.limits.suggestions,
                )
                if not ctx.pre_execution_errors and ctx.query:
                    self.checked.add(ctx.query, document)
            if not ctx.pre_execution_errors:
                cost = estimate_cost(
                    schema, document.definitions, ctx.variables or {}, dict(self.limits.max_sizes)
                )
                if cost > self.limits.max_cost:
                    ctx.pre_execution_errors = [
                        limit_error(
                            "QUERY_TOO_COSTLY",
                            f"The query's estimated cost is {cost}; the limit is "
                            f"{self.limits.max_cost}. Ask for fewer items (`first`, `k`) "
                            "or fewer fields.",
                        )
                    ]
        yield


def check_shape(definitions: Any, limits: Limits) -> GraphQLError | None:
    """Returns the error for the first of introspection, depth, aliases that is over its
    limit in any operation of the document, else None. Works on unvalidated documents."""
    walker = _Walker(definitions)
    if not limits.introspection and walker.uses_introspection():
        return limit_error("INTROSPECTION_DISABLED", "Introspection is disabled on this server")
    depth = max((walker.depth(op.selection_set) for op in walker.operations), default=0)
    if depth > limits.max_depth:
        return limit_error(
            "QUERY_TOO_DEEP",
            f"The query nests fields {depth} levels deep; the limit is {limits.max_depth}",
        )
    aliases = max((walker.aliases(op.selection_set) for op in walker.operations), default=0)
    if aliases > limits.max_aliases:
        return limit_error(
            "TOO_MANY_ALIASES",
            f"The query uses {aliases} aliases; the limit is {limits.max_aliases}",
        )
    return None


def estimate_cost(
    schema: GraphQLSchema,
    definitions: Any,
    variables: Mapping[str, Any],
    max_sizes: Mapping[str, int] | None = None,
) -> int:
    """The highest estimated cost of the document's operations (see the module docstring);
    `max_sizes` caps the `first`/`k` values counted (none by default).

    The document must have passed validation (every field and fragment exists).
    """
    walker = _Walker(definitions, schema, max_sizes or {})
    costs = [0]
    for op in walker.operations:
        root = schema.get_root_type(OperationType(op.operation))
        if root is not None:
            defaults = {
                d.variable.name.value: value_from_ast_untyped(d.default_value)
                for d in op.variable_definitions or ()
                if d.default_value is not None
            }
            costs.append(walker.cost(op.selection_set, root, {**defaults, **variables}))
    return max(costs)


class _Walker:
    """Walks a document's selections; fragments are computed once (a "fragment bomb" that
    spreads one fragment twice per level costs time linear in its size, not exponential)."""

    def __init__(
        self,
        definitions: Any,
        schema: GraphQLSchema | None = None,
        max_sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.schema = schema
        self.max_sizes = max_sizes or {}
        self.operations = [d for d in definitions if isinstance(d, OperationDefinitionNode)]
        self.fragments = {
            d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._memo: dict[tuple[str, str, object], int] = {}
        self._visiting: set[str] = set()

    def uses_introspection(self) -> bool:
        return any(
            self._any_field(op.selection_set, lambda f: f.name.value in INTROSPECTION_FIELDS)
            for op in self.operations
        ) or any(
            self._any_field(f.selection_set, lambda f: f.name.value in INTROSPECTION_FIELDS)
            for f in self.fragments.values()
        )

    def _any_field(self, selections: SelectionSetNode, test: Any) -> bool:
        for selection in selections.selections:
            if isinstance(selection, FieldNode) and test(selection):
                return True
            inner = getattr(selection, "selection_set", None)
            if inner is not None and self._any_field(inner, test):
                return True
        return False

    def _fragment(self, name: str, kind: str, key: object, compute: Any) -> int:
        memo_key = (kind, name, key)
        if memo_key in self._memo:
            return self._memo[memo_key]
        fragment = self.fragments.get(name)
        if fragment is None or name in self._visiting:  # unknown or cyclic: validation says
            return 0
        self._visiting.add(name)
        try:
            value: int = compute(fragment)
        finally:
            self._visiting.discard(name)
        self._memo[memo_key] = value
        return value

    def depth(self, selections: SelectionSetNode | None) -> int:
        """Levels of fields under `selections` (introspection fields count as leaves)."""
        if selections is None:
            return 0
        deepest = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                inner = None if selection.name.value.startswith("__") else selection.selection_set
                deepest = max(deepest, 1 + self.depth(inner))
            elif isinstance(selection, InlineFragmentNode):
                deepest = max(deepest, self.depth(selection.selection_set))
            elif isinstance(selection, FragmentSpreadNode):
                deepest = max(
                    deepest,
                    self._fragment(
                        selection.name.value, "depth", None, lambda f: self.depth(f.selection_set)
                    ),
                )
        return deepest

    def aliases(self, selections: SelectionSetNode | None) -> int:
        """Aliased fields under `selections`, a fragment's counted at each spread."""
        if selections is None:
            return 0
        count = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                count += (selection.alias is not None) + self.aliases(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                count += self.aliases(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                count += self._fragment(
                    selection.name.value, "aliases", None, lambda f: self.aliases(f.selection_set)
                )
        return count

    def cost(
        self,
        selections: SelectionSetNode | None,
        parent: Any,
        variables: Mapping[str, Any],
        size: int | None = None,
    ) -> int:
        """Estimated fields resolved under `selections` on the type `parent`; `size` is the
        `first`/`k` of the field that owns them, for a list among them."""
        if selections is None:
            return 0
        total = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                total += self._field_cost(selection, parent, variables, size)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                on = self._schema_type(condition.name.value) if condition else parent
                total += self.cost(selection.selection_set, on, variables, size)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(
                    selection.name.value,
                    "cost",
                    size,  # the variables are the same throughout one walk
                    lambda f: self.cost(
                        f.selection_set,
                        self._schema_type(f.type_condition.name.value),
                        variables,
                        size,
                    ),
                )
        return total

    def _field_cost(
        self, node: FieldNode, parent: Any, variables: Mapping[str, Any], size: int | None
    ) -> int:
        name = node.name.value
        if name.startswith("__") or not isinstance(
            parent, GraphQLObjectType | GraphQLInterfaceType
        ):
            return 1
        field = parent.fields.get(name)
        if field is None:
            return 1
        own_size = _size_argument(node, field, variables, self.max_sizes)
        field_type = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        if isinstance(field_type, GraphQLList):
            count = own_size if own_size is not None else size
            items = DEFAULT_LIST_SIZE if count is None else count
            return 1 + items * self.cost(node.selection_set, get_named_type(field_type), variables)
        return 1 + self.cost(node.selection_set, get_named_type(field_type), variables, own_size)

    def _schema_type(self, name: str) -> Any:
        return None if self.schema is None else self.schema.get_type(name)


def _size_argument(
    node: FieldNode, field: Any, variables: Mapping[str, Any], max_sizes: Mapping[str, int]
) -> int | None:
    """The field's `first` or `k`: from the query, its variables or the schema default,
    at most its `max_sizes` entry."""
    for name in SIZE_ARGUMENTS:
        if name not in field.args:
            continue
        value: object = None
        given = next((a for a in node.arguments or () if a.name.value == name), None)
        if given is not None:
            if isinstance(given.value, IntValueNode):
                value = int(given.value.value)
            elif isinstance(given.value, VariableNode):
                value = variables.get(given.value.name.value)
        if value is None:
            default = field.args[name].default_value
            value = None if default is Undefined else default
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, min(value, max_sizes.get(name, value)))
    return None
