"""README.md is what a newcomer runs first: the configs it names exist, every `python -m zoo fit|validate|test|predict`
command it shows (and every CLI option its prose names) is accepted by the CLI's parser, and every name its Python
snippets import or call from zoo exists and takes the keywords shown. Nothing trains: the commands are parsed with
--print_config, in this process (one import of the CLI for all of them)."""

import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# `<ckpt>`, `<best.ckpt>`, `<folder>`, `<plain export>` stand for the user's files; --print_config reads no path
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
STAND_IN = "/nonexistent/readme_placeholder"
# the prose names CLI options (`--trainer.precision bf16-mixed`) without a config: checked against the config of the
# README section they are in (one whose data / model take them)
SECTION_CONFIGS = {
    "Time series": "configs/ts/etth1_itransformer_diff.yaml",
    "Scene-text": "configs/str/synthetic.yaml",
    "Vision-language": "configs/vlm/csv_captions.yaml",  # the user-data options the section names
}
DEFAULT_SECTION_CONFIG = "configs/lm/shakespeare_char.yaml"
NOT_OPTIONS = {"model.safetensors", "trainer.test"}  # a file and a Trainer method the prose names


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line of the block's first code line, dedented body)`` of every fenced block."""
    out, lang, start, body, indent = [], None, 0, [], ""
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if lang is None and stripped.startswith("```"):
            lang, start, body, indent = stripped[3:].strip(), i + 1, [], line[: len(line) - len(line.lstrip())]
        elif lang is not None and stripped == "```":
            out.append((lang, start, textwrap.dedent("\n".join(body))))
            lang = None
        elif lang is not None:
            body.append(line[len(indent):] if line.startswith(indent) else line)
    return out


def config_paths(text: str) -> list[str]:
    """Every ``configs/...yaml`` path the text names; ``adapt_{dex,difflora,opamp}.yaml`` names three."""
    paths = []
    for p in re.findall(r"configs/[\w./{},-]+?\.yaml", text):
        m = re.search(r"\{([^}]*)\}", p)
        paths += [p[: m.start()] + alt + p[m.end():] for alt in m.group(1).split(",")] if m else [p]
    return sorted(set(paths))


def zoo_commands(text: str) -> list[tuple[int, list[str]]]:
    """``(README line, argv after `python -m zoo`)`` of every fit / validate / test / predict command of a bash block,
    placeholders replaced by a stand-in path."""
    cmds = []
    for lang, start, body in code_blocks(text):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            first, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            tokens = shlex.split(PLACEHOLDER.sub(STAND_IN, line), comments=True)
            for k in range(len(tokens) - 3):
                if tokens[k: k + 3] == ["python", "-m", "zoo"] and tokens[k + 3] in SUBCOMMANDS:
                    argv = []
                    for tok in tokens[k + 3:]:
                        if tok in ("&", "&&", ";", "|", "||"):
                            break
                        argv.append(tok)
                    cmds.append((start + first, argv))
    return cmds


def prose_options(text: str) -> dict[str, list[tuple[int, list[str]]]]:
    """The zoo CLI options of inline code spans outside code blocks (``--trainer.precision bf16-mixed``, and keys
    named without dashes, ``data.time_features: true``, as a bare ``--data.time_features``), by the config they are
    checked against: ``{config: [(README line, tokens)]}``."""
    in_block, section, found = False, "", {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            continue
        if line.startswith("## "):
            section = line[3:]
        cfg = next((c for key, c in SECTION_CONFIGS.items() if section.startswith(key)), DEFAULT_SECTION_CONFIG)
        for span in re.findall(r"`(--\w+\.[^`]*)`", line):  # `--trainer.x`, not a script's `--model-args '{...}'`
            found.setdefault(cfg, []).append((n, shlex.split(PLACEHOLDER.sub(STAND_IN, span))))
        # a key named in prose (`data.time_features: true`, `data.on_missing=skip`): checked as a key
        for key in re.findall(r"`((?:data|model|trainer)\.[\w.]+)(?:\s*[:=][^`]*)?`", line):
            if key not in NOT_OPTIONS:
                found.setdefault(cfg, []).append((n, ["--" + key]))
    return found


def parse_cli(argv: list[str]) -> tuple[bool, str]:
    """Runs ``python -m zoo <argv> --print_config`` in this process: ``(accepted, printed config or the error)``."""
    from zoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["python -m zoo"]  # Lightning warns when it is given args and sys.argv holds other ones
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([*argv, "--print_config"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            msg = err.getvalue().strip()
            return False, msg[msg.rfind("error:"):] if "error:" in msg else msg[-1500:]  # not the whole usage
    except Exception as exc:  # noqa: BLE001 -- named in the failure message
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        sys.argv = saved
    return True, out.getvalue()


def command_problems(cmds: list[tuple[int, list[str]]]) -> list[str]:
    """The commands the CLI refuses. Commands of one subcommand and config are parsed as one (the union of their
    options, one parse per config), and one by one only when that union is refused, to name the command."""
    problems, groups = [], {}
    for line, argv in cmds:
        if "--config" not in argv[:-1]:
            problems.append(f"README line {line}: `python -m zoo {shlex.join(argv)}` names no --config")
            continue
        i = argv.index("--config")
        groups.setdefault((argv[0], argv[i + 1]), []).append((line, argv))
    for (sub, cfg), group in groups.items():
        union = [sub, "--config", cfg]
        for _, argv in group:
            i = argv.index("--config")
            union += argv[1:i] + argv[i + 2:]
        if parse_cli(union)[0]:
            continue
        named = len(problems)
        for line, argv in group:
            ok, msg = parse_cli(argv)
            if not ok:
                problems.append(f"README line {line}: `python -m zoo {shlex.join(argv)}` is refused by the CLI:\n{msg}")
        if len(problems) == named:  # each alone parses: only their union is refused
            problems.append(f"README lines {[n for n, _ in group]}: the options of these `python -m zoo {sub} --config "
                            f"{cfg}` commands are refused together: {shlex.join(union)}")
    return problems


def _keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return set()
    out = set()
    for k, v in tree.items():
        out |= {prefix + str(k)} | _keys(v, f"{prefix}{k}.")
    return out


def prose_option_problems(found: dict[str, list[tuple[int, list[str]]]]) -> list[str]:
    """Options given with a value are parsed together, one parse per config; one named without a value
    (`--trainer.max_steps`) must be a key of that config's printed configuration."""
    problems = []
    for cfg, spans in found.items():
        argv, bare = [], []
        for line, tokens in spans:
            i = 0
            while i < len(tokens):
                opt = tokens[i]
                if "=" in opt or (i + 1 < len(tokens) and not tokens[i + 1].startswith("--")):
                    argv += [opt] if "=" in opt else [opt, tokens[i + 1]]
                    i += 1 if "=" in opt else 2
                else:
                    bare.append((line, opt))
                    i += 1
        ok, out = parse_cli(["fit", "--config", cfg, *argv])
        if not ok:
            problems.append(f"the options {shlex.join(argv)} (README lines {sorted({n for n, _ in spans})}) are "
                            f"refused with {cfg}:\n{out}")
            continue
        keys = _keys(yaml.safe_load(out))
        short = {k.replace(".init_args.", ".", 1) for k in keys}  # `--data.x` for `--data.init_args.x`
        problems += [f"README line {line}: {opt} is no option of {cfg}" for line, opt in bare
                     if opt[2:] not in keys | short]
    return problems


def _resolve(node: ast.AST, names: dict[str, Any]) -> Optional[tuple[str, Any]]:
    """``(dotted name, object)`` of a Name / Attribute chain rooted in a name bound to a zoo object, else None.
    Raises AttributeError naming the first missing part."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    dotted, obj = names[node.id]
    for part in reversed(parts):
        if not isinstance(obj, types.ModuleType):  # an attribute of an object (a model's method): not checked here
            return None
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                raise AttributeError(f"{dotted} has no attribute {part!r}") from None
        dotted = f"{dotted}.{part}"
    return dotted, obj


def python_problems(text: str) -> list[str]:
    """Names a ```python block imports from zoo (or reads off a zoo module) that do not exist, and calls of zoo
    functions with keywords or argument counts their signatures refuse."""
    problems = []
    for lang, start, body in code_blocks(text):
        if lang != "python":
            continue
        try:
            tree = ast.parse(body)
        except SyntaxError as exc:
            problems.append(f"README line {start + (exc.lineno or 1) - 1}: python block does not parse: {exc.msg}")
            continue
        names: dict[str, tuple[str, Any]] = {}
        for node in ast.walk(tree):
            where = f"README line {start + getattr(node, 'lineno', 1) - 1}"
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] != "zoo":
                        continue
                    try:
                        mod = importlib.import_module(a.name)
                    except ImportError as exc:
                        problems.append(f"{where}: import {a.name}: {exc}")
                        continue
                    if a.asname:  # `import zoo.nn.adapters as A` binds the submodule, `import zoo.nn` binds zoo
                        names[a.asname] = (a.name, mod)
                    else:
                        names["zoo"] = ("zoo", importlib.import_module("zoo"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "zoo":
                try:
                    mod = importlib.import_module(node.module)
                except ImportError as exc:
                    problems.append(f"{where}: from {node.module} import ...: {exc}")
                    continue
                for a in node.names:
                    if hasattr(mod, a.name):
                        names[a.asname or a.name] = (f"{node.module}.{a.name}", getattr(mod, a.name))
                        continue
                    try:
                        names[a.asname or a.name] = (f"{node.module}.{a.name}",
                                                     importlib.import_module(f"{node.module}.{a.name}"))
                    except ImportError:
                        problems.append(f"{where}: {node.module} has no {a.name!r}")
        for node in ast.walk(tree):
            where = f"README line {start + getattr(node, 'lineno', 1) - 1}"
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                try:
                    _resolve(node, names)
                except AttributeError as exc:
                    problems.append(f"{where}: {exc}")
            if not isinstance(node, ast.Call):
                continue
            try:
                found = _resolve(node.func, names)
            except AttributeError:
                continue  # named above
            if found is None or not callable(found[1]) or isinstance(found[1], types.ModuleType):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue
            try:
                sig = inspect.signature(found[1])
            except (TypeError, ValueError):
                continue
            try:
                sig.bind(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as exc:
                problems.append(f"{where}: {found[0]}({ast.unparse(node)[len(ast.unparse(node.func)) + 1:]}: {exc}")
    return problems


@pytest.fixture
def readme_text(monkeypatch) -> str:
    monkeypatch.chdir(ROOT)  # the configs and their ../shared data paths are relative to the repository root
    return README.read_text(encoding="utf-8")


def test_readme_configs_exist(readme_text):
    paths = config_paths(readme_text)
    assert "configs/lm/tiny.yaml" in paths, "the README's main job config was not found: is the extraction broken?"
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert not missing, f"README.md names configs that do not exist: {missing}"


def test_readme_zoo_commands_parse(readme_text):
    cmds = zoo_commands(readme_text)
    assert len(cmds) >= 20 and {"fit", "test", "predict"} <= {a[0] for _, a in cmds}, f"extraction broken? {cmds}"
    problems = command_problems(cmds)
    assert not problems, "\n\n".join(problems)


def test_readme_prose_options_parse(readme_text):
    found = prose_options(readme_text)
    assert sum(len(v) for v in found.values()) >= 10, found
    problems = prose_option_problems(found)
    assert not problems, "\n\n".join(problems)


def test_readme_python_names_exist(readme_text):
    problems = python_problems(readme_text)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_mangled_readme(readme_text):
    """Each check fails on a README with one command option, one config, one import, one keyword and two options
    named in prose wrong."""
    bad = readme_text.replace("--data.init_args.predict_dir crops/", "--data.init_args.predict_folder crops/", 1)
    bad = bad.replace("configs/vlm/synthetic_nofda.yaml", "configs/vlm/synthetic_no_fda.yaml", 1)
    bad = bad.replace("from zoo.models.str import export_onnx", "from zoo.models.str import to_onnx", 1)
    bad = bad.replace("eps=4 / 255, steps=10)", "eps=4 / 255, n_steps=10)", 1)
    bad = bad.replace("`--trainer.precision bf16-mixed`", "`--trainer.precission bf16-mixed`", 1)
    bad = bad.replace("`data.synth_train_shear`", "`data.synth_shear`", 1)
    assert bad.count("predict_folder") == 1 and "n_steps=10" in bad and "precission" in bad and "synth_shear`" in bad

    assert [p for p in config_paths(bad) if not (ROOT / p).is_file()] == ["configs/vlm/synthetic_no_fda.yaml"]
    # only the commands the mangling changed are parsed again
    changed = [c for c in zoo_commands(bad) if c not in zoo_commands(readme_text)]
    assert len(changed) == 2, changed
    problems = command_problems(changed)
    assert len(problems) == 2, problems
    assert any("predict_folder" in p for p in problems)
    assert any("synthetic_no_fda.yaml" in p for p in problems)
    py = python_problems(bad)
    assert any("to_onnx" in p for p in py) and any("n_steps" in p and "pgd_attack" in p for p in py), py
    opts = prose_options(bad)
    assert any("precission" in p for p in prose_option_problems({DEFAULT_SECTION_CONFIG: opts[DEFAULT_SECTION_CONFIG]}))
    str_cfg = SECTION_CONFIGS["Scene-text"]
    assert [p for p in prose_option_problems({str_cfg: opts[str_cfg]}) if "synth_shear" in p] == [
        f"README line {next(n for n, t in opts[str_cfg] if t == ['--data.synth_shear'])}: --data.synth_shear is no "
        f"option of {str_cfg}"]
    assert prose_option_problems({DEFAULT_SECTION_CONFIG: [(1, ["--trainer.max_stepz"])]}) == [
        f"README line 1: --trainer.max_stepz is no option of {DEFAULT_SECTION_CONFIG}"]
