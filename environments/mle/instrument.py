"""Progress instrumentation for partial credit (arXiv 2509.01684, section on partial credit).

The agent's program is handed to a frozen LM with the request to add one progress print after each
milestone it reaches (imports done, data loaded, model defined, model trained, predictions made,
submission written). The run's stdout then says how far the program got, even when it crashes,
and each milestone seen earns +0.1.

The LM is trusted with nothing: its output is accepted only if, once the milestone prints it added
are removed, its AST equals the agent's program exactly (so it cannot fix bugs, add code, or drop
the agent's own prints). Otherwise, or when the LM fails, :func:`ast_instrument` inserts the same
prints itself at the first statement that does each milestone's typical call.

The prints carry a random per-attempt token that never leaves the host: it tells the prints the
instrumenter added from look-alikes in the agent's own code. They are not what the run prints:
:mod:`.milestones` compiles each of them into a call that only reports a milestone when that very
statement runs, under a per-run key the program cannot read.
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: Milestones in the order a training program reaches them, and what each one means.
MILESTONES: dict[str, str] = {
    "imports": "the imports are done",
    "data_loaded": "the training data has been read",
    "model_defined": "the model object has been created",
    "model_trained": "the model has been fitted",
    "predictions_made": "predictions on the test set have been computed",
    "submission_written": "the submission file has been written",
}

#: Call names (the last attribute or the function name) that mark each milestone, for the AST fallback.
_MILESTONE_CALLS: dict[str, tuple[str, ...]] = {
    "data_loaded": ("read_csv", "read_parquet", "read_table", "loadtxt", "genfromtxt", "load", "read_json"),
    "model_defined": (
        "make_pipeline", "Pipeline", "Sequential", "GridSearchCV", "RandomizedSearchCV",
    ),
    "model_trained": ("fit", "fit_transform", "train", "cross_val_score", "cross_validate"),
    "predictions_made": ("predict", "predict_proba", "decision_function"),
    "submission_written": ("to_csv", "savetxt", "to_parquet"),
}  # fmt: skip
#: Class-name endings that mark a model constructor (LogisticRegression, RandomForestClassifier, SVC...).
_MODEL_SUFFIXES = ("Classifier", "Regressor", "Regression", "Model", "SVC", "SVR", "Ridge", "Lasso", "ElasticNet",
                   "RidgeCV", "LassoCV", "Boost", "NB", "Net", "KMeans", "Forest", "Tree")  # fmt: skip


@runtime_checkable
class Instrumenter(Protocol):
    """A frozen text-in/text-out LM: any policy of :mod:`agentrl.policies` wrapped to ``complete``."""

    def complete(self, prompt: str) -> str: ...


class CallableInstrumenter:
    """Adapts any ``fn(prompt) -> text`` (an LLM agent's generate call, a served model) to :class:`Instrumenter`."""

    def __init__(self, fn: Callable[[str], str]):
        self.fn = fn

    def complete(self, prompt: str) -> str:
        return self.fn(prompt)


class PolicyInstrumenter:
    """Adapts a token-level policy of :mod:`agentrl.policies` (``generate(prompts, sampling)``) and its tokenizer.

    Duck-typed, so environments import nothing from the policy side: ``sampling`` is the caller's
    ``SamplingParams`` (greedy, with ``max_new_tokens`` large enough for a whole program). The
    prompt goes through the tokenizer's chat template when it has one.
    """

    def __init__(self, policy: Any, tokenizer: Any, sampling: Any):
        self.policy = policy
        self.tokenizer = tokenizer
        self.sampling = sampling

    def complete(self, prompt: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
        else:
            ids = tok.encode(prompt)
        (completion,) = self.policy.generate([list(ids)], self.sampling)
        if completion.text is not None:
            return completion.text
        return tok.decode(completion.token_ids, skip_special_tokens=True)


def new_token() -> str:
    """A per-attempt token (128 bits) for the instrumenter's prints; never shown to the agent."""
    return secrets.token_hex(16)


def marker(token: str, name: str) -> str:
    return f"@@milestone {token} {name}@@"


def milestone_statement(token: str, name: str) -> str:
    return f"print({marker(token, name)!r}, flush=True)"


_MARKER_RE = re.compile(r"@@milestone ([0-9A-Za-z]+) ([a-z_]+)@@")


# -- verification ------------------------------------------------------------------------------


def is_milestone_print(stmt: ast.stmt, token: str) -> bool:
    """Is ``stmt`` exactly a milestone print of the instrumenter, carrying ``token``?"""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    call = stmt.value
    if not (isinstance(call.func, ast.Name) and call.func.id == "print" and len(call.args) == 1):
        return False
    arg = call.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return False
    m = _MARKER_RE.fullmatch(arg.value)
    if not (m and m.group(1) == token and m.group(2) in MILESTONES):
        return False
    return all(kw.arg == "flush" and isinstance(kw.value, ast.Constant) for kw in call.keywords)


class _StripMilestones(ast.NodeTransformer):
    def __init__(self, token: str):
        self.token = token
        self.removed = 0

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                kept = [s for s in value if not is_milestone_print(s, self.token)]
                self.removed += len(value) - len(kept)
                setattr(node, name, kept)
        return super().generic_visit(node)


def only_prints_added(original: str, instrumented: str, token: str) -> tuple[bool, str]:
    """``(ok, why)``: is ``instrumented`` exactly ``original`` plus milestone prints carrying ``token``?"""
    try:
        tree_original = ast.parse(original)
    except SyntaxError as exc:
        return False, f"the original program does not parse: {exc}"
    try:
        tree_new = ast.parse(instrumented)
    except SyntaxError as exc:
        return False, f"the instrumented program does not parse: {exc.msg} (line {exc.lineno})"
    stripper = _StripMilestones(token)
    tree_new = stripper.visit(tree_new)
    if stripper.removed == 0:
        return False, "no milestone print was added"
    if ast.dump(tree_new) != ast.dump(tree_original):
        return False, "the instrumented program changes more than print calls"
    return True, f"{stripper.removed} milestone print(s) added, nothing else changed"


# -- the LM instrumenter -----------------------------------------------------------------------


def instrumentation_prompt(program: str, token: str) -> str:
    lines = "\n".join(
        f"- {name}: after {what}: {milestone_statement(token, name)}" for name, what in MILESTONES.items()
    )
    return (
        "You instrument Python programs that train a machine-learning model. Insert progress prints into the "
        "program below, one after the statement that reaches each milestone (skip milestones the program never "
        "reaches):\n"
        f"{lines}\n\n"
        "Change nothing else: do not fix, add, remove or reformat any other code. Each print is its own statement "
        "with the same indentation as the statement before it. Reply with the complete program in one ```python "
        "block.\n\n"
        f"```python\n{program}\n```\n"
    )


_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)


def extract_code(text: str) -> str | None:
    """The first fenced code block of ``text`` (```python or bare ```), or None."""
    m = _FENCE_RE.search(text)
    return m.group(1) if m else None


# -- the deterministic fallback ----------------------------------------------------------------


def _call_names(node: ast.AST) -> list[str]:
    names = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            if isinstance(f, ast.Attribute):
                names.append(f.attr)
            elif isinstance(f, ast.Name):
                names.append(f.id)
    return names


def _own_expressions(stmt: ast.stmt) -> list[ast.AST]:
    """The parts of a statement that run when it starts (not the bodies of compound statements)."""
    out: list[ast.AST] = []
    for name, value in ast.iter_fields(stmt):
        if name in ("body", "orelse", "finalbody", "handlers", "cases"):
            continue
        if name in ("decorator_list", "args", "returns") and isinstance(
            stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            continue
        if isinstance(value, ast.AST):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, ast.AST))
    return out


def _matches(name: str, calls: list[str]) -> bool:
    if name == "model_defined":
        return any(
            c in _MILESTONE_CALLS[name] or (c[:1].isupper() and c.endswith(_MODEL_SUFFIXES)) for c in calls
        )
    return any(c in _MILESTONE_CALLS[name] for c in calls)


def _print_node(token: str, name: str, at: ast.stmt) -> ast.stmt:
    """A milestone print located on the line of ``at`` (so tracebacks keep the program's own line numbers)."""
    node = ast.parse(milestone_statement(token, name)).body[0]
    for sub in ast.walk(node):
        sub.lineno = sub.end_lineno = getattr(at, "end_lineno", None) or getattr(at, "lineno", 1)
        sub.col_offset = sub.end_col_offset = 0
    return node


def ast_instrument_tree(program: str, token: str) -> ast.Module:
    """The AST of ``program`` with milestone prints inserted; every original node keeps its location.

    ``imports`` goes after the last top-level import (if any); the others after the earliest statement
    (by line) whose own expressions call e.g. ``read_csv`` (data), a ``...Classifier(...)``
    constructor (model), ``.fit`` (trained), ``.predict`` (predictions), ``.to_csv`` (submission), in
    whatever block it sits. A print that would follow a ``return``/``raise``/``break``/``continue``
    goes before it. Raises ``SyntaxError`` if ``program`` does not parse.
    """
    tree = ast.parse(program)
    # (block, index) of every statement, in line order
    located: list[tuple[int, int, list[ast.stmt], int, ast.stmt]] = []
    for node in ast.walk(tree):
        for fname, value in ast.iter_fields(node):
            if fname in ("body", "orelse", "finalbody") and isinstance(value, list):
                for i, stmt in enumerate(value):
                    if isinstance(stmt, ast.stmt):
                        located.append((stmt.lineno, stmt.col_offset, value, i, stmt))
    located.sort(key=lambda t: (t[0], t[1]))
    inserts: list[tuple[list[ast.stmt], int, str, ast.stmt]] = []  # (block, position, milestone, anchor)
    last_import = None
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            last_import = i
    if last_import is not None:  # a program without imports does not earn this milestone
        inserts.append((tree.body, last_import + 1, "imports", tree.body[last_import]))
    for name in list(MILESTONES)[1:]:
        for _, _, block, index, stmt in located:
            calls = [c for expr in _own_expressions(stmt) for c in _call_names(expr)]
            if calls and _matches(name, calls):
                jumps = isinstance(stmt, ast.Return | ast.Raise | ast.Break | ast.Continue)
                inserts.append((block, index if jumps else index + 1, name, stmt))
                break
    # insert from the back of each block so earlier positions stay valid; same position keeps milestone order
    order = {name: k for k, name in enumerate(MILESTONES)}
    for block, position, name, anchor in sorted(inserts, key=lambda t: (id(t[0]), -t[1], -order[t[2]])):
        block.insert(position, _print_node(token, name, anchor))
    return tree


def ast_instrument(program: str, token: str) -> str:
    """:func:`ast_instrument_tree` as source text (for reading and for the LM-output verifier)."""
    return ast.unparse(ast_instrument_tree(program, token))


def _merge_prints(lm_node: ast.AST, original: ast.AST, token: str) -> ast.AST:
    """Put the milestone prints of ``lm_node`` into ``original`` (equal to it without them, as verified).

    The result is the original tree, with its own line numbers, plus the prints located on the line
    of the statement they follow.
    """
    for field, value in ast.iter_fields(original):
        lm_value = getattr(lm_node, field)
        if isinstance(value, list) and any(isinstance(v, ast.stmt) for v in [*value, *lm_value]):
            merged: list[ast.stmt] = []
            rest = iter(value)
            for stmt in lm_value:
                if is_milestone_print(stmt, token):
                    anchor = merged[-1] if merged else value[0] if value else original
                    name = _MARKER_RE.fullmatch(stmt.value.args[0].value).group(2)  # type: ignore[attr-defined]
                    merged.append(_print_node(token, name, anchor))  # type: ignore[arg-type]
                else:
                    merged.append(_merge_prints(stmt, next(rest), token))  # type: ignore[arg-type]
            setattr(original, field, merged)
        elif isinstance(value, list):
            for a, b in zip(lm_value, value, strict=True):
                if isinstance(b, ast.AST):
                    _merge_prints(a, b, token)
        elif isinstance(value, ast.AST):
            _merge_prints(lm_value, value, token)
    return original


@dataclass(frozen=True)
class Instrumented:
    """An instrumented program and how it was made."""

    source: str  # the instrumented program as text
    method: str  # "lm" or "ast"
    note: str  # why the LM's version was accepted or refused
    tree: ast.Module  # the same program with the agent's own line numbers (compile it with .milestones)


def instrument(program: str, token: str, lm: Instrumenter | None = None) -> Instrumented:
    """Instrument ``program`` with the LM when it behaves, else with :func:`ast_instrument`.

    Raises ``SyntaxError`` when ``program`` itself does not parse (the env reports it to the agent).
    """
    ast.parse(program)
    note = "no instrumenting LM configured"
    if lm is not None:
        try:
            reply = lm.complete(instrumentation_prompt(program, token))
        except Exception as exc:  # a failing LM costs the partial credit's precision, never the episode
            note = f"the LM failed ({type(exc).__name__}: {str(exc)[:100]})"
        else:
            code = extract_code(reply) if isinstance(reply, str) else None
            if code is None:
                note = "the LM reply has no code block"
            else:
                ok, why = only_prints_added(program, code, token)
                if ok:
                    tree = _merge_prints(ast.parse(code), ast.parse(program), token)
                    return Instrumented(code, "lm", why, tree)  # type: ignore[arg-type]
                note = f"LM output refused: {why}"
    tree = ast_instrument_tree(program, token)
    return Instrumented(ast.unparse(tree), "ast", note, tree)
