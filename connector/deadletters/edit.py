"""Edits a replay applies to a dead letter's record: a JSON Patch, or a JMESPath expression.

- **JSON Patch** (RFC 6902): a JSON array of operations `add`, `remove`, `replace`, `move`,
  `copy` and `test`, each with a `path` (a JSON Pointer, RFC 6901: `/name`, `/address/city`,
  `/tags/0`, `/tags/-` to append; `~1` stands for `/` and `~0` for `~`) and a `value` or a
  `from`. The operations apply in order to a copy; any that fails (a missing member, a `test`
  that does not hold) leaves the record as it was and the dead letter is not replayed.
- **JMESPath**: an expression over the record (the language of the mappings,
  docs/mapping.md) whose result is the new record, a JSON object:
  `merge(@, {name: 'Tower A'})`, `merge(@, {siteId: join('-', ['S', siteId])})`.

Either may be given on the command line or, as `@FILE`, in a file. Both are checked once,
before anything is read (`EditError` names the operation and what is wrong).

Must not: do I/O beyond reading the edit's file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Edit", "EditError", "apply_patch", "compile_edit", "parse_pointer"]

_OPS = {"add": ("value",), "remove": (), "replace": ("value",), "move": ("from",),
        "copy": ("from",), "test": ("value",)}  # fmt: skip


class EditError(ValueError):
    """An edit that cannot be compiled, or that does not apply to a record."""


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901: `""` is the whole document, `/a/b~1c` is ["a", "b/c"]."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise EditError(f"{pointer!r} is not a JSON Pointer: it must be empty or start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _index(part: str, size: int, *, for_add: bool) -> int:
    if part == "-" and for_add:
        return size
    if not part.isdigit() or (part != "0" and part.startswith("0")):
        raise EditError(f"{part!r} is not an array index")
    index = int(part)
    if index > size or (index == size and not for_add):
        raise EditError(f"index {index} is beyond the array's {size} items")
    return index


def _parent(doc: Any, tokens: list[str], pointer: str) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise EditError(f"{pointer}: no member {token!r}")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(token, len(current), for_add=False)]
        else:
            raise EditError(f"{pointer}: {token!r} is below a value that is not a container")
    return current


def _get(doc: Any, pointer: str) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, pointer), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise EditError(f"{pointer}: no member {last!r}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), for_add=False)]
    raise EditError(f"{pointer}: the parent is not a container")


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, pointer), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), for_add=True), value)
    else:
        raise EditError(f"{pointer}: the parent is not a container")
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        raise EditError("cannot remove the whole record")
    parent, last = _parent(doc, tokens, pointer), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise EditError(f"{pointer}: no member {last!r}")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(last, len(parent), for_add=False)]
    else:
        raise EditError(f"{pointer}: the parent is not a container")
    return doc


def _replace(doc: Any, pointer: str, value: Any) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    _get(doc, pointer)  # it must exist
    parent, last = _parent(doc, tokens, pointer), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        parent[_index(last, len(parent), for_add=False)] = value
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 equality: numbers by value, but true is not 1; objects unordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _check_ops(ops: Any) -> list[dict[str, Any]]:
    if not isinstance(ops, list):
        raise EditError("a JSON Patch is a JSON array of operations")
    for n, op in enumerate(ops, 1):
        if not isinstance(op, dict) or op.get("op") not in _OPS:
            raise EditError(f'patch operation {n}: needs "op": one of {", ".join(_OPS)}')
        if not isinstance(op.get("path"), str):
            raise EditError(f'patch operation {n} ({op["op"]}): needs a "path" (a JSON Pointer)')
        for member in _OPS[op["op"]]:
            if member not in op:
                raise EditError(f"patch operation {n} ({op['op']}): needs {member!r}")
        try:
            parse_pointer(op["path"])
            if "from" in _OPS[op["op"]]:
                parse_pointer(str(op["from"]))
        except EditError as exc:
            raise EditError(f"patch operation {n} ({op['op']}): {exc}") from None
    return ops


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """The document after the operations (a copy; `doc` is left as it is)."""
    result = copy.deepcopy(doc)
    for n, op in enumerate(ops, 1):
        try:
            result = _apply_one(result, op)
        except EditError as exc:
            raise EditError(f"patch operation {n} ({op['op']}): {exc}") from None
    return result


def _apply_one(doc: Any, op: dict[str, Any]) -> Any:
    kind, path = op["op"], op["path"]
    if kind == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if kind == "remove":
        return _remove(doc, path)
    if kind == "replace":
        return _replace(doc, path, copy.deepcopy(op["value"]))
    if kind == "move":
        source = op["from"]
        if path != source and path.startswith(source + "/"):
            raise EditError(f"cannot move {source} into its own child {path}")
        value = _get(doc, source)
        return _add(_remove(doc, source), path, value)
    if kind == "copy":
        return _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
    if not _json_equal(_get(doc, path), op["value"]):  # test
        raise EditError(f"test failed: {path} is not {orjson.dumps(op['value']).decode()}")
    return doc


class Edit:
    """A compiled edit: `apply(record)` gives the new record or raises `EditError`."""

    def __init__(self, describe: str, apply: Callable[[Any], Any]) -> None:
        self.describe = describe
        self._apply = apply

    def apply(self, record: Any) -> Any:
        result = self._apply(record)
        if not isinstance(result, dict):
            raise EditError(
                f"the edit made a JSON {type(result).__name__}, not an object (a record); "
                "with JMESPath start from the record: merge(@, {...})"
            )
        return result


def _text(arg: str) -> str:
    """The argument, or the content of the file `@FILE` names."""
    if not arg.startswith("@"):
        return arg
    path = Path(arg[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EditError(f"{path}: {exc.strerror or exc}") from None


def compile_edit(*, patch: str | None = None, jmespath_expr: str | None = None) -> Edit | None:
    """The edit of `--patch` or `--jmespath` (at most one of them), checked; None for none."""
    if patch is not None and jmespath_expr is not None:
        raise EditError("give --patch or --jmespath, not both")
    if patch is not None:
        try:
            ops = _check_ops(orjson.loads(_text(patch)))
        except orjson.JSONDecodeError as exc:
            raise EditError(f"the patch is not JSON: {exc}") from None
        return Edit(f"JSON Patch of {len(ops)} operation(s)", lambda doc: apply_patch(doc, ops))
    if jmespath_expr is not None:
        text = _text(jmespath_expr).strip()
        try:
            compiled = jmespath.compile(text)
        except JMESPathError as exc:
            raise EditError(f"not a valid JMESPath expression: {exc}") from None

        def search(doc: Any) -> Any:
            try:
                return compiled.search(doc)
            except JMESPathError as exc:
                raise EditError(f"the JMESPath expression failed: {exc}") from None

        return Edit(f"JMESPath {text}", search)
    return None
