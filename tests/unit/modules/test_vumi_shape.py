"""
The execution module is the public face and nothing more: each public function
checks its arguments and hands over to the helpers, in at most 15 lines of code
under its docstring (comments and blank lines not counted).
"""

import ast
import pathlib

MODULE = pathlib.Path(__file__).resolve().parents[3] / "salt" / "_modules" / "vumi.py"
MOST = 15


def code_lines(function, source):
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    lines = {n for stmt in body for node in ast.walk(stmt) if hasattr(node, "lineno")
             for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}  # fmt: skip
    return [n for n in lines if source[n - 1].strip() and not source[n - 1].strip().startswith("#")]


def test_every_public_function_is_short():
    text = MODULE.read_text()
    source = text.splitlines()
    public = [f for f in ast.parse(text).body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")]
    assert len(public) > 30  # the module's functions, found
    long = {f.name: len(code_lines(f, source)) for f in public if len(code_lines(f, source)) > MOST}
    assert long == {}, f"public functions over {MOST} lines of code: {long}"
