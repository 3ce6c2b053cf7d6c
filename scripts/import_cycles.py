#!/usr/bin/env python3
"""Reports module import cycles in each crate of the workspace.

Plain Python, no dependencies. For every `.rs` file under `<crate>/src`, the
module path comes from the file path (`a/mod.rs` and `a.rs` are module `a`).
Every `crate::…`, `super::…` and `self::…` path in the file (in `use`
statements, brace groups expanded, or inline) is an edge to the longest
known module prefix of that path. `pub use` re-exports are followed to the
module that defines the item, and are not edges themselves (a `mod.rs` that
re-exports its children is a facade, not a dependency). Paths inside an
inline `mod name { … }` (e.g. `mod tests`) resolve `super::` from that
inner module. Using an ancestor module's items (`super::Result` in a child
of `mod.rs`) is not an edge: that is the module tree itself. Cycles are the strongly connected components with more than
one module.

    python3 scripts/import_cycles.py [CRATE_DIR ...]   # default: the workspace
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # String literals can hold `crate::` (error messages); blank them.
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{" and depth == 0:
            prefix = tree[:i]
            inner = tree[i + 1 : tree.rindex("}")]
            parts, cur, d = [], "", 0
            for c in inner:
                if c == "," and d == 0:
                    parts.append(cur)
                    cur = ""
                    continue
                d += c == "{"
                d -= c == "}"
                cur += c
            parts.append(cur)
            out = []
            for p in parts:
                if p.strip():
                    out += [prefix + q for q in expand_use(p)]
            return out
    return [re.sub(r"\s+as\s+\w+$", "", tree)]


def inline_mods(text):
    """(start, end, name) of each inline `mod name { … }` block."""
    spans = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += text[i] == "{"
            depth -= text[i] == "}"
            if depth == 0:
                break
            i += 1
        spans.append((m.start(), i, m.group(1)))
    return spans


def scope_at(base, spans, pos):
    scope = list(base)
    for s, e, name in spans:
        if s <= pos <= e:
            scope.append(name)
    return tuple(scope)


def absolute(path, scope):
    segs = [s.strip() for s in path.split("::") if s.strip()]
    if not segs:
        return None
    if segs[0] == "crate":
        return segs[1:]
    cur = list(scope)
    if segs[0] not in ("super", "self"):
        return None
    while segs and segs[0] in ("super", "self"):
        if segs.pop(0) == "super":
            cur = cur[:-1]
    return cur + segs


def analyse(crate):
    src = os.path.join(crate, "src")
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(src, p)] = strip_comments(open(p).read())
    modules = set(files)  # inline modules are scopes, not graph nodes
    reexports = {}  # (module, name) -> absolute target path
    raw = {}  # module -> list of (absolute path, is_pub_use)
    for mod, text in files.items():
        spans = inline_mods(text)
        items = []
        for m in re.finditer(r"(\bpub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);", text):
            scope = scope_at(mod, spans, m.start())
            for p in expand_use(m.group(2)):
                a = absolute(p, scope)
                if a is None:
                    continue
                items.append((a, bool(m.group(1))))
                if m.group(1) and a and a[-1] not in ("*", "self"):
                    reexports[(mod, a[-1])] = a
        body = re.sub(r"\buse\s+[^;]+;", "", text)
        spans = inline_mods(body)
        for m in re.finditer(r"\b((?:crate|super|self)(?:\s*::\s*" + IDENT + ")+)", body):
            a = absolute(m.group(1), scope_at(mod, spans, m.start()))
            if a is not None:
                items.append((a, False))
        raw[mod] = items

    def resolve(path, seen=()):
        path = [s for s in path if s != "self"]
        for k in range(len(path), -1, -1):
            head = tuple(path[:k])
            if head in modules:
                if k < len(path) and (head, path[k]) in reexports and head not in seen:
                    return resolve(reexports[(head, path[k])], seen + (head,))
                return head
        return None

    graph = {m: set() for m in modules}
    for mod, items in raw.items():
        for a, is_pub_use in items:
            if is_pub_use:
                continue
            t = resolve(a)
            # A module using its own ancestors' items (`super::Result`) is
            # the tree itself, not an import circle.
            if t is not None and mod[: len(t)] != t:
                graph[mod].add(t)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def name(m):
    return "::".join(m) or "(crate root)"


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = sys.argv[1:] or [
        os.path.join(root, c) for c in ("kernels", "engine", "diffusion", ".")
    ]
    total = 0
    for crate in crates:
        graph = analyse(crate)
        label = os.path.basename(os.path.abspath(crate))
        found = cycles(graph)
        total += len(found)
        for comp in found:
            members = set(comp)
            edges = sorted(
                f"{name(a)} -> {name(b)}" for a in comp for b in graph[a] if b in members
            )
            print(f"{label}: cycle of {len(comp)}: {', '.join(map(name, comp))}")
            for e in edges:
                print(f"    {e}")
        if not found:
            print(f"{label}: no cycles")
    print(f"{total} cycle(s)")


if __name__ == "__main__":
    main()
