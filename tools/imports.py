"""Checks which way imports go inside src/ (outside test modules).

Each top-level module belongs to a layer: domain (values, names, the plan),
adapters (the table, Secrets Manager, the cluster, the snapshot
repository), application (reconciles, rendering, the CLI, the daemon).
An import may go to the same layer or down, never up, and the top-level
modules must not import each other in a cycle. A module and its own
submodules are one unit (a submodule using its parent's types is how Rust
modules are built, not a cycle).

Run from the project root: python3 tools/imports.py [--check]
(--check exits 1 on any violation; CI runs it from `just test`).
"""
import glob
import re
import sys

LAYERS = {
    "domain": ["secret", "source", "manifest", "plan", "labels", "rollout_rules", "rotation",
               "metrics", "backoff", "aws_error", "errors", "text", "progress"],
    "adapters": ["aws_http", "credstash", "secretsmanager", "cluster", "snapshot"],
    "application": ["reconcile", "restore", "rollback_requests", "render", "telemetry",
                    "context", "cli", "daemon"],
}
RANK = {module: rank for rank, layer in enumerate(LAYERS.values()) for module in layer}


def top_modules():
    """Top-level module -> the top-level modules its files import."""
    graph = {}
    for path in sorted(glob.glob("src/**/*.rs", recursive=True)):
        rel = path[len("src/"):-len(".rs")]
        if rel in ("lib", "main"):
            continue
        top = rel.split("/")[0]
        text = open(path).read().split("#[cfg(test)]")[0]
        deps = graph.setdefault(top, set())
        for name in re.findall(r"crate::([a-z_]+)", text):
            if name != top:
                deps.add(name)
    return graph


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    graph = top_modules()
    problems = []
    for module in sorted(graph):
        if module not in RANK:
            problems.append(f"{module}: in no layer (add it to LAYERS in tools/imports.py)")
            continue
        for dep in sorted(graph[module]):
            if dep not in RANK:
                continue
            if RANK[dep] > RANK[module]:
                problems.append(f"{module} ({layer_of(module)}) imports {dep} ({layer_of(dep)}): against the layer order")
        print(f"{module:18} [{layer_of(module)}] -> {', '.join(sorted(graph[module])) or '-'}")
    for component in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(component))
    print("problems:", "none" if not problems else "")
    for problem in problems:
        print("  " + problem)
    if "--check" in sys.argv and problems:
        sys.exit(1)


def layer_of(module):
    return next(name for name, modules in LAYERS.items() if module in modules)


if __name__ == "__main__":
    main()
