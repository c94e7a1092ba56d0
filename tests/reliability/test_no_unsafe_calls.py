"""AST check: nothing in the packages unpickles, evals, or torch.loads without weights_only=True."""
import ast
import pathlib

from tests.helpers.data import ROOT

PACKAGES = ["shards", "pipeline", "tools"]
BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
BANNED_CALLS = {"eval", "exec", "loads_pickle"}


def problems_in(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            owner = getattr(getattr(node.func, "value", None), "id", "")
            kwargs = {k.arg: k.value for k in node.keywords}
            if isinstance(node.func, ast.Name) and name in BANNED_CALLS:
                found.append(f"{where} calls {name}()")
            if owner == "torch" and name == "load":
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{where} torch.load without weights_only=True")
            if name == "load" and owner in ("np", "numpy"):
                ap = kwargs.get("allow_pickle")
                if not (isinstance(ap, ast.Constant) and ap.value is False):
                    found.append(f"{where} np.load without allow_pickle=False")
            if owner == "yaml" and name == "load":
                found.append(f"{where} yaml.load (use yaml.safe_load)")
    return found


def test_no_unsafe_deserialisation_in_the_packages():
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 10
    problems = [p for f in files for p in problems_in(f)]
    print(f"AST check: {len(files)} files, {len(problems)} unsafe call(s)")
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_should(tmp_path):
    bad = ROOT / "tests" / "reliability" / "_unsafe_sample.py"
    bad.write_text("import pickle\nimport torch, numpy as np\nx = eval('1')\ntorch.load('f')\n"
                   "np.load('f')\ntorch.load('f', weights_only=True)\n")
    try:
        found = problems_in(bad)
    finally:
        bad.unlink()
    assert len(found) == 4, found
