"""One sampling request from the slider to the SGLD step: one settings type, one name for the guidance, one energy
per chain, and code small enough to read."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import torch

from clel import CLEL, get_preset
from clel.sampling import Condition
from clel_app.chains import plan_chain, stream_frames
from clel_app.limits import clamp_request

REPO = Path(__file__).resolve().parents[1]
CODE = ("clel", "app", "scripts", "measure")
# a chain setting, maybe prefixed by its use (cond_steps, fid_sweeps); not the model's training constants (its
# config's sgld_*, what ChainSettings.from_model reads) nor a cost cap (Limits.max_steps)
SETTING = re.compile(r"^(?:(?!sgld_|max_)\w+_)?(steps|sweeps|step_size|noise|guidance)$")


def modules():
    for root in CODE:
        for path in sorted((REPO / root).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def test_one_dataclass_holds_the_chain_settings():
    holders = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                scalar = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                          and isinstance(s.target, ast.Name) and SETTING.match(s.target.id)
                          and not re.match(r"(list|tuple|dict|Iterator)\b", ast.unparse(s.annotation))]
                if scalar:
                    holders.append((path.relative_to(REPO).as_posix(), node.name, scalar))
    assert [h[:2] for h in holders] == [("clel/sampling.py", "ChainSettings")], holders


# The guidance's way from the Gradio slider to the SGLD step, module by module.
WALK = ("app/layout.py", "app/live.py", "app/limits.py", "app/chains.py", "clel/sampling.py", "clel/energy.py",
        "clel/sgld.py")


def names_guidance(tree: ast.AST) -> bool:
    """An identifier, argument, attribute, keyword or string key ``guidance`` (prose in docstrings is not)."""
    for node in ast.walk(tree):
        name = (node.id if isinstance(node, ast.Name) else node.arg if isinstance(node, (ast.arg, ast.keyword))
                else node.attr if isinstance(node, ast.Attribute) else node.value if isinstance(node, ast.Constant)
                else None)
        if name == "guidance":
            return True
    return False


def test_the_guidance_is_named_in_at_most_four_modules_from_slider_to_step():
    named = [m for m in WALK if names_guidance(ast.parse((REPO / m).read_text()))]
    # the slider (layout), the API's parameter (live), the settings and the condition (sampling), E(x, z) (energy)
    assert named == ["app/layout.py", "app/live.py", "clel/sampling.py", "clel/energy.py"]
    assert not re.search(r"\bbeta\b", (REPO / "clel" / "sampling.py").read_text().replace("cfg.beta", ""))


def test_a_demo_chain_encodes_its_reference_images_once():
    torch.manual_seed(0)
    model = CLEL(get_preset("tiny")).eval().requires_grad_(False)
    calls = []
    model.h.register_forward_hook(lambda *_: calls.append(1))
    lm = SimpleNamespace(model=model)
    req = clamp_request({"n": 2, "steps": 3, "guidance": 1.0, "seed": 0})
    a, b = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32)
    for condition, encoded in ((Condition.instance(a), 1), (Condition.interpolate(a[:1], b), 2)):
        calls.clear()
        *_, last = stream_frames(plan_chain(lm, condition, req), req.total_steps)
        assert last.final and len(last.history) == 4 and len(calls) == encoded


def test_functions_and_modules_stay_small():
    long = [(p.relative_to(REPO).as_posix(), n.name, n.end_lineno - n.lineno + 1) for p, tree in modules()
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert long == []
    assert max(len(p.read_text().splitlines()) for p in (REPO / "app").glob("*.py")) <= 400
    assert len((REPO / "scripts" / "evaluate.py").read_text().splitlines()) < 150
