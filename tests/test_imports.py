"""The house has no circles: no module of the toolkit imports one that imports it back, at any depth, lazily or not."""
import ast

from conftest import REPO_ROOT


def local_imports():
    """Each top-level module's imports of other top-level modules, function-level imports included."""
    modules = {path.stem: path for path in REPO_ROOT.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        graph[name] = sorted(imported & set(modules) - {name})
    return graph


def find_cycle(graph):
    """One import cycle of `graph` as a list of modules (the first repeated at the end), or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for imported in graph[module]:
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported, path + [imported])):
                return cycle
        state[module] = "done"
        return None

    for module in graph:
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_nothing_else():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_every_import_runs_one_way():
    graph = local_imports()
    assert {"dataset", "faces", "photos", "inference", "evaluation", "submissions"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))

