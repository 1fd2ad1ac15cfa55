"""JSON Patch (RFC 6902, its own examples) and JMESPath edits of a dead letter's record."""

from __future__ import annotations

from typing import Any

import pytest

from connector.deadletters.edit import EditError, apply_patch, compile_edit, parse_pointer


def patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    return apply_patch(doc, ops)


@pytest.mark.parametrize(
    ("doc", "ops", "expected"),
    [
        # RFC 6902 appendix A.1 - A.10, A.16
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}],
         {"baz": "qux", "foo": "bar"}),
        ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}],
         {"foo": ["bar", "qux", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}],
         {"foo": ["bar", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}],
         {"baz": "boo", "foo": "bar"}),
        ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
         [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
         {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
        ({"foo": ["all", "grass", "cows", "eat"]},
         [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
         {"foo": ["all", "cows", "eat", "grass"]}),
        ({"baz": "qux", "foo": ["a", 2, "c"]},
         [{"op": "test", "path": "/baz", "value": "qux"},
          {"op": "test", "path": "/foo/1", "value": 2}],
         {"baz": "qux", "foo": ["a", 2, "c"]}),
        ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
         {"foo": "bar", "child": {"grandchild": {}}}),
        ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
         {"foo": ["bar", ["abc", "def"]]}),
        ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
        ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}],
         {"a": {"b": 1}, "c": {"b": 1}}),
    ],
)  # fmt: skip
def test_the_rfc_examples_apply(doc: Any, ops: list[dict[str, Any]], expected: Any) -> None:
    before = repr(doc)
    assert patch(doc, ops) == expected
    assert repr(doc) == before, "the input is left as it was"


@pytest.mark.parametrize(
    ("doc", "ops", "says"),
    [
        ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], "no member 'baz'"),
        ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], "test failed"),
        ({"foo": 1}, [{"op": "test", "path": "/foo", "value": True}], "test failed"),
        ({"foo": ["a"]}, [{"op": "remove", "path": "/foo/1"}], "beyond the array"),
        ({"foo": ["a"]}, [{"op": "replace", "path": "/foo/01", "value": 1}], "not an array index"),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b"}], "its own child"),
        ({"a": 1}, [{"op": "replace", "path": "/b", "value": 2}], "no member 'b'"),
    ],
)  # fmt: skip
def test_an_operation_that_does_not_apply_names_itself(
    doc: Any, ops: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(EditError, match="patch operation 1") as caught:
        patch(doc, ops)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"op": "add"}', "JSON array"),
        ('[{"op": "merge", "path": "/a"}]', "one of add, remove"),
        ('[{"op": "add", "path": "a", "value": 1}]', "must be empty or start with '/'"),
        ('[{"op": "add", "path": "/a"}]', "needs 'value'"),
        ('[{"op": "move", "path": "/a"}]', "needs 'from'"),
        ("[", "not JSON"),
    ],
)
def test_a_bad_patch_is_refused_before_anything_is_read(text: str, says: str) -> None:
    with pytest.raises(EditError, match=says):
        compile_edit(patch=text)


def test_a_patch_or_an_expression_can_come_from_a_file(tmp_path: Any) -> None:
    (tmp_path / "fix.json").write_text('[{"op": "replace", "path": "/name", "value": "HQ"}]')
    (tmp_path / "fix.jmespath").write_text("merge(@, {name: 'Tower'})\n")
    by_patch = compile_edit(patch=f"@{tmp_path / 'fix.json'}")
    by_expr = compile_edit(jmespath_expr=f"@{tmp_path / 'fix.jmespath'}")
    assert by_patch is not None
    assert by_expr is not None
    assert by_patch.apply({"name": "x", "buildingId": "B"}) == {"name": "HQ", "buildingId": "B"}
    assert by_expr.apply({"name": "x"}) == {"name": "Tower"}
    with pytest.raises(EditError, match=r"missing\.json"):
        compile_edit(patch=f"@{tmp_path / 'missing.json'}")


def test_a_jmespath_edit_must_give_a_record() -> None:
    edit = compile_edit(jmespath_expr="name")
    assert edit is not None
    with pytest.raises(EditError, match=r"not an object .*merge\(@"):
        edit.apply({"name": "x"})
    with pytest.raises(EditError, match="not a valid JMESPath"):
        compile_edit(jmespath_expr="merge(@,")
    with pytest.raises(EditError, match="not both"):
        compile_edit(patch="[]", jmespath_expr="@")
    assert compile_edit() is None


def test_pointers_unescape_in_the_rfc_order() -> None:
    assert parse_pointer("") == []
    assert parse_pointer("/a~1b/~01") == ["a/b", "~1"]
