"""What every meshir tool shares: loading a module, flag overrides, diagnostics
on stderr with the right exit status, and atomic output files."""
from __future__ import annotations

import os
import sys
import tempfile
import traceback
from typing import Callable

from meshir.attributes import SymbolRef
from meshir.diagnostics import FlagError, MeshirError, RuntimeFailure, Source
from meshir.ir import Module
from meshir.mesh import Mesh, parse_layout_spec, parse_mesh_spec

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def run_main(tool: str, body: Callable[[], int]) -> int:
    """Run a tool body: user errors print as diagnostics (exit 2), never as
    tracebacks; anything else is a meshir bug and says so."""
    try:
        return body()
    except RuntimeFailure as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_RUNTIME
    except MeshirError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - anything else is a meshir bug
        return _internal_error(tool, exc)


def _internal_error(tool: str, exc: BaseException) -> int:
    """A bug in meshir, not in the user's input: say so, with the trace for the report."""
    print(f"{tool}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    print("This is a bug in meshir; please report it with the input that caused it.", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    return EXIT_RUNTIME


def read_input(path: str) -> Source:
    from meshir.frontends.text import read_source

    if path == "-":
        data = sys.stdin.buffer.read()
        try:
            return Source("<stdin>", data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MeshirError(f"<stdin> is not UTF-8 text (bad byte at offset {exc.start})") from None
    return read_source(path)


def load_module(path: str, mesh_flag: str | None = None, layout_flag: str | None = None) -> Module:
    """Parse and verify a module, then apply `--mesh` / `--layout` overrides."""
    from meshir.frontends.text import parse_module

    module = parse_module(read_input(path))
    apply_overrides(module, mesh_flag, layout_flag)
    return module


AUTO_LAYOUT = "auto"  # --layout auto: the auto-layout pass chooses the rules


def check_auto_layout(layout_flag: str | None, passes: str) -> None:
    """`--layout auto` leaves the rules to the auto-layout pass, so the pipeline must run it."""
    if layout_flag == AUTO_LAYOUT and "auto-layout" not in passes:
        raise FlagError("--layout auto: --passes must run auto-layout before layout (or leave out --passes)")


def apply_overrides(module: Module, mesh_flag: str | None, layout_flag: str | None) -> None:
    """`--mesh` replaces the global functions' mesh; `--layout` their layout rules."""
    from meshir.verifier import verify_module

    if mesh_flag is None and layout_flag is None:
        return
    global_functions = [f for f in module.functions.values() if not f.is_local]
    if mesh_flag is not None:
        try:
            used = {f.mesh_symbol() for f in global_functions if f.mesh_symbol()}
            name = used.pop() if len(used) == 1 else "mesh"
            mesh = parse_mesh_spec(mesh_flag, name)
        except MeshirError as exc:
            raise FlagError(f"--mesh: {exc.message}") from None
        module.meshes[name] = Mesh(name, mesh.axes)
        for function in global_functions:
            function.attributes["mesh"] = SymbolRef(name)
    if layout_flag == AUTO_LAYOUT:  # the auto-layout pass replaces the rules (tools/compile.py)
        for function in global_functions:
            if "mesh" not in function.attributes:
                raise FlagError(f"--layout auto: func @{function.name} has no mesh; give one with --mesh")
    elif layout_flag is not None:
        try:
            rules = parse_layout_spec(layout_flag)
        except MeshirError as exc:
            raise FlagError(f"--layout: {exc.message}") from None
        for function in global_functions:
            if "mesh" not in function.attributes:
                raise FlagError(f"--layout: func @{function.name} has no mesh; give one with --mesh")
            mesh = module.meshes[function.mesh_symbol()]
            try:
                rules.check_against(mesh)
            except MeshirError as exc:
                raise FlagError(f"--layout: {exc.message}") from None
            function.attributes["layout"] = rules
    try:
        verify_module(module)
    except MeshirError as exc:
        flags = " and ".join(f for f, v in (("--mesh", mesh_flag), ("--layout", layout_flag)) if v is not None)
        raise FlagError(f"{flags}: {exc.message}", exc.loc) from None


def with_default_mode(path: str, directory: bool = False) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (owner-only) the mode a plain
    open() or mkdir() would have given it under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a
    crash) never sees half a file, and an error leaves no file at all. A device or
    pipe is written directly."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FlagError(f"-o: folder '{directory}' does not exist")
    mode = "wb" if isinstance(data, bytes) else "w"
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        # A device or pipe (-o /dev/null, -o /dev/stdout): write to it; renaming over it would replace it.
        with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            handle.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=".meshir-", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            handle.write(data)
        with_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
