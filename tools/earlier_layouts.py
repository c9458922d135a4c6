"""Write ``web/selva_earlier_layouts.js``: how the earlier SelVA pack laid out its nodes.

ComfyUI saves a node's widget values by position. The earlier pack (ethanfel/ComfyUI-SelVA)
registers the same node ids as ours with other widget lists, so ``web/selva_compat.js`` needs,
per node id, the widget order (and each widget's type and default) and the sockets of every
earlier layout, to recognise a node saved by it and put each value on the widget of the same name.

This reads the earlier source from a git checkout WITHOUT running it (its nodes import ComfyUI and
its core): each node class's ``INPUT_TYPES`` return value and ``RETURN_TYPES`` / ``RETURN_NAMES``
are read from the syntax tree, literals only. Each ref given (branch, tag or commit) is read; a
node whose layout is the same on several refs is listed once with all of them.

    python tools/earlier_layouts.py /path/to/ComfyUI-SelVA.git main 40d29bc
    python tools/earlier_layouts.py --check ...   # exit 1 if the kept file differs

The result is kept in the pack (the earlier source is never copied into it).
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "web" / "selva_earlier_layouts.js"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = ("seed", "noise_seed")  # the frontend adds a control widget to these by name
# Options kept per widget (enough to tell a value's kind and to show a default).
KEPT_OPTIONS = ("default", "min", "max", "multiline", "forceInput", "control_after_generate")

# Widgets our nodes renamed: node id -> {earlier name: our name}. Checked against our node
# classes by the tests (tests/test_compat_workflows.py).
# An earlier name that our node also has (e.g. an option added here under the same name) is used
# as it is; these apply only where ours lacks it.
RENAMED: dict[str, dict[str, str]] = {
    "SelvaLoraEvaluator": {"eval_file": "adapters_file"},
    "SelvaSkipExperiment": {"output_root": "sweep_dir"},
    "SelvaLoraTrainer": {"resume_path": "resume", "timestep_mode": "timestep_sampling",
                         "init_mode": "init", "use_rslora": "rslora"},
    # (the TI Trainer's inject_mode is an input of ours under that name, suffix and prefix)
}


def git_show(git_dir: Path, ref: str, path: str) -> Optional[str]:
    try:
        return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{ref}:{path}"], check=True,
                              capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
        return None


def resolve(git_dir: Path, ref: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--short=7", f"{ref}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def _literal(node: ast.AST, env: Optional[dict] = None) -> Any:
    """A literal's value (numbers, strings, lists/tuples/dicts of them, unary minus, simple
    arithmetic, module-level constants in ``env``); ``...`` (Ellipsis) for anything else."""
    env = env or {}
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Name):
        return env.get(node.id, ...)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e, env) for e in node.elts]
        if any(i is ... for i in items):
            return ...
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _literal(node.left, env), _literal(node.right, env)
        if a is not ... and b is not ...:
            try:
                return {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                        ast.Div: lambda: a / b}[type(node.op)]()
            except Exception:
                return ...
    return ...


def _node_modules(init_source: str) -> dict[str, tuple[str, str]]:
    """node id -> (module file, class name) from the earlier ``nodes/__init__.py`` _NODES table."""
    tree = ast.parse(init_source)
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_NODES" for t in node.targets):
            table = _literal(node.value)
            for node_id, entry in table.items():
                out[node_id] = (entry[0].lstrip("."), entry[1])
    return out


def _class(tree: ast.Module, name: str) -> Optional[ast.ClassDef]:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _input_types(cls: ast.ClassDef) -> Optional[ast.Dict]:
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "INPUT_TYPES":
            returns = [n for n in ast.walk(item) if isinstance(n, ast.Return)]
            if returns and isinstance(returns[-1].value, ast.Dict):
                return returns[-1].value
    return None


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level ``NAME = <literal>`` assignments (type names such as AUDIO_DATASET)."""
    env: dict[str, Any] = {}
    for item in tree.body:
        if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            value = _literal(item.value, env)
            if value is not ...:
                env[item.targets[0].id] = value
    return env


def _class_attr(cls: ast.ClassDef, name: str, env: dict) -> Any:
    for item in cls.body:
        if isinstance(item, ast.Assign) and any(getattr(t, "id", "") == name for t in item.targets):
            value = _literal(item.value, env)
            return None if value is ... else value
    return None


def layout(source: str, class_name: str) -> Optional[dict]:
    """{"widgets": [...], "inputs": [...], "outputs": [...]} of one node class, or None."""
    tree = ast.parse(source)
    env = _constants(tree)
    cls = _class(tree, class_name)
    if cls is None:
        return None
    spec = _input_types(cls)
    if spec is None:
        return None
    widgets, inputs = [], []
    for section_key, section in zip(spec.keys, spec.values):
        if _literal(section_key) not in ("required", "optional") or not isinstance(section, ast.Dict):
            continue
        optional = _literal(section_key) == "optional"
        for key, value in zip(section.keys, section.values):
            name = _literal(key)
            parts = value.elts if isinstance(value, ast.Tuple) else [value]
            kind_node = parts[0]
            opts_node = parts[1] if len(parts) > 1 and isinstance(parts[1], ast.Dict) else None
            opts = {}
            if opts_node is not None:
                for k, v in zip(opts_node.keys, opts_node.values):
                    k = _literal(k)
                    if k in KEPT_OPTIONS and _literal(v) is not ...:
                        opts[k] = _literal(v)
            kind = _literal(kind_node, env)
            if isinstance(kind, (list, tuple)) or kind is ...:
                # a combo (a literal list of choices, or one built from a variable)
                entry = {"name": name, "type": "COMBO", **opts}
                if isinstance(kind, (list, tuple)):
                    entry["options"] = list(kind)
                widgets.append(entry)
            elif kind in WIDGET_TYPES and not opts.get("forceInput"):
                widgets.append({"name": name, "type": kind, **opts})
                control = opts.get("control_after_generate", name in SEED_NAMES)
                if kind == "INT" and control:
                    widgets.append({"name": "control_after_generate", "type": "COMBO", "control": True})
            else:
                inputs.append({"name": name, "type": kind, "optional": optional})
    types = _class_attr(cls, "RETURN_TYPES", env) or ()
    names = _class_attr(cls, "RETURN_NAMES", env) or types
    outputs = [{"name": n, "type": t} for n, t in zip(names, types)]
    return {"widgets": widgets, "inputs": inputs, "outputs": outputs}


def collect(git_dir: Path, refs: list[str]) -> dict:
    nodes: dict[str, list[dict]] = {}
    sources = {}
    for ref in refs:
        commit = resolve(git_dir, ref)
        sources[ref] = commit
        init = git_show(git_dir, ref, "nodes/__init__.py")
        if init is None:
            raise SystemExit(f"{ref}: no nodes/__init__.py")
        for node_id, (module, class_name) in sorted(_node_modules(init).items()):
            source = git_show(git_dir, ref, f"nodes/{module}.py")
            found = layout(source, class_name) if source else None
            if found is None:
                continue
            same = next((e for e in nodes.setdefault(node_id, []) if
                         {k: e[k] for k in found} == found), None)
            if same is not None:
                same["refs"].append(commit)
            else:
                nodes[node_id].append({"refs": [commit], **found})
    return {"source": {"repository": "ethanfel/ComfyUI-SelVA", "refs": sources},
            "renamed": RENAMED, "nodes": nodes}


def render(table: dict) -> str:
    return ("// Generated by tools/earlier_layouts.py from the earlier SelVA pack's source (its node\n"
            "// layouts only); do not edit by hand. Read by selva_compat.js.\n"
            f"export const EARLIER = {json.dumps(table, indent=1, sort_keys=True)};\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("git_dir", type=Path, help="a git directory of ethanfel/ComfyUI-SelVA")
    ap.add_argument("refs", nargs="+", help="branches / commits to read (e.g. main 40d29bc)")
    ap.add_argument("--check", action="store_true", help="only compare with the kept file")
    args = ap.parse_args(argv)
    text = render(collect(args.git_dir, args.refs))
    if args.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs from the earlier source")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(OUT.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
