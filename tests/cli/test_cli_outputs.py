"""Where the CLI writes (issue #11): output and cache locations checked before anything loads, write
errors as one `error:` line with exit 2, atomic writes with short unique temporary names and the
umask's mode, pages counted as done only when their output is a real image, seeds, option names in
messages, and Ctrl-C at any moment."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorflow_core import cli
from colorflow_core.engine import MAX_SEED, ColorFlow
from colorflow_core.errors import InputError, OutputError
from colorflow_core.files import atomic_write, check_writable_folder, save_image_atomic
from colorflow_core.retrieve.pool import ReferencePool
from colorflow_core.retrieve.references import REFERENCE_PATCH_KINDS
from colorflow_core.sizes import PageSize
from tests.support.parity import REPO_ROOT

LONG_STEM = "a" * 240  # + ".png": a valid file name (244 bytes); its old temporary names were not


def _page(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (70, 60), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def inputs(tmp_path) -> tuple[Path, Path]:
    pages, refs = tmp_path / "pages", tmp_path / "refs"
    pages.mkdir()
    refs.mkdir()
    for k, name in enumerate(["p1.png", "p2.png"]):
        _page(pages / name, k)
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(refs / "ref0.png")
    return pages, refs


def _args(release: Path, pages: Path | str, refs: Path | str, out: Path, *extra: str) -> list[str]:
    return ["colorize", str(pages), "--refs", str(refs), "--out", str(out), "--release", str(release),
            "--base", str(release / "base"), "--size", "64x64", "--steps", "1", "--no-screentone",
            "--device", "cpu", *extra]


@pytest.fixture()
def no_load(monkeypatch) -> list[dict]:
    """ColorFlow.load replaced by a recorder that stops the run: proves what is refused before loading."""
    calls: list[dict] = []

    def load(*args, **kwargs):
        calls.append(kwargs)
        raise InputError("models were loaded")

    monkeypatch.setattr(ColorFlow, "load", load)
    return calls


def _one_error(err: str) -> str:
    """The single `error:` line of a run's stderr (also its last line), and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    return errors[0]


# ---- 1. output locations checked before anything loads -------------------------------------------

@pytest.mark.parametrize("problem", ["out_is_file", "sheets_is_file", "pool_cache_is_file", "out_parent_is_file"])
def test_unwritable_locations_are_refused_before_loading(problem, release, inputs, tmp_path, capsys,
                                                         no_load) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    extra: list[str] = []
    if problem == "out_is_file":
        out.write_text("a file")
        culprit = out
    elif problem == "sheets_is_file":
        out.mkdir()
        (out / "sheets").write_text("a file")
        culprit = out / "sheets"
    elif problem == "pool_cache_is_file":
        culprit = tmp_path / "cache"
        culprit.write_text("a file")
        extra = ["--pool-cache", str(culprit)]
    else:
        (tmp_path / "blocker").write_text("a file")
        out = tmp_path / "blocker" / "out"
        culprit = out
    assert cli.main(_args(release, pages, refs, out, *extra)) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {culprit}: ") and "not a folder" in line
    assert not no_load


def test_read_only_output_is_refused_before_loading(release, inputs, tmp_path, capsys, no_load,
                                                    monkeypatch) -> None:
    """The file system under OUT refuses writes (EROFS), as a read-only mount does; chmod cannot show it
    to root, so the kernel's answer is simulated at os.open / os.mkdir."""
    pages, refs = inputs
    out = tmp_path / "ro_out"
    out.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path) -> None:
        if Path(path).resolve().is_relative_to(out.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def ro_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    assert cli.main(_args(release, pages, refs, out)) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert line == f"error: cannot write {out}: Read-only file system"
    assert not no_load


def test_pool_cache_entry_that_is_a_folder_is_one_error_line(release, inputs, tmp_path, capsys,
                                                             monkeypatch) -> None:
    pages, refs = inputs
    out, cache = tmp_path / "out", tmp_path / "cache"
    monkeypatch.setattr(ReferencePool, "_key", staticmethod(lambda *args: "fixedkey"))
    entry = cache / "pool-fixedkey.safetensors"
    entry.mkdir(parents=True)
    assert cli.main(_args(release, pages, refs, out, "--pool-cache", str(cache))) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {entry}: ")
    assert "0 of 2" in line
    assert entry.is_dir() and not list(cache.rglob("*.tmp"))


# ---- 2. disk full --------------------------------------------------------------------------------

def test_disk_full_keeps_finished_pages_and_leaves_no_partial_file(release, inputs, tmp_path, capsys,
                                                                   monkeypatch) -> None:
    """The disk fills up in the middle of the second page's PNG (ENOSPC from the write)."""
    pages, refs = inputs
    out = tmp_path / "out"
    real_save = Image.Image.save
    png_writes = []

    def save(self, fp, format=None, **params):
        if not isinstance(fp, (str, os.PathLike)) and format == "PNG":
            png_writes.append(1)
            if len(png_writes) == 4:  # page 1: sheet + ICP sheet + page; page 2: its sheet hits the full disk
                fp.write(b"\x89PNG\r\n\x1a\n half a file")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", save)
    assert cli.main(_args(release, pages, refs, out, "--batch-size", "2")) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    sheet = out / "sheets" / "p2_canvas.png"
    assert line.startswith(f"error: cannot write {sheet}: No space left on device")
    assert "1 of 2" in line
    assert (out / "p1.png").is_file() and not (out / "p2.png").exists() and not sheet.exists()
    assert not list(out.rglob("*.tmp"))


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")


def test_really_full_disk(release, inputs, tmp_path, capsys) -> None:
    """A real full file system (a tiny tmpfs, filled up) where mounting is allowed."""
    pages, refs = inputs
    out = tmp_path / "full"
    _mount_tmpfs(out, "size=64k")
    try:
        with open(out / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        assert cli.main(_args(release, pages, refs, out, "--pool-cache", str(tmp_path / "cache"))) == cli.EXIT_ERROR
        line = _one_error(capsys.readouterr().err)
        assert line.startswith(f"error: cannot write {out}") and "No space left on device" in line
        assert "0 of 2" in line
        assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["filler"]
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_really_read_only_output(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    out = tmp_path / "ro"
    _mount_tmpfs(out, "ro,size=64k")
    try:
        assert cli.main(_args(release, pages, refs, out)) == cli.EXIT_ERROR
        assert _one_error(capsys.readouterr().err) == f"error: cannot write {out}: Read-only file system"
        assert not no_load
    finally:
        subprocess.run(["umount", str(out)], check=False)


# ---- 3 and 17. long page names, file modes -------------------------------------------------------

@pytest.fixture(scope="module")
def long_name_run(release, tmp_path_factory) -> Path:
    """One page with a 240-character name, written under umask 022."""
    folder = tmp_path_factory.mktemp("long")
    pages, refs, out = folder / "pages", folder / "refs", folder / "out"
    pages.mkdir()
    refs.mkdir()
    _page(pages / f"{LONG_STEM}.png")
    _page(refs / "ref0.png", 3)
    old = os.umask(0o022)
    try:
        assert cli.main(_args(release, pages, refs, out)) == 0
    finally:
        os.umask(old)
    return out


def test_long_page_names_work(long_name_run) -> None:
    out = long_name_run
    assert Image.open(out / f"{LONG_STEM}.png").size == (96, 96)
    assert Image.open(out / "sheets" / f"{LONG_STEM}_canvas.png").size == (128, 128)
    assert not list(out.rglob("*.tmp"))


def test_outputs_get_the_umask_mode(long_name_run) -> None:
    out = long_name_run
    written = [out / f"{LONG_STEM}.png", out / "sheets" / f"{LONG_STEM}_canvas.png",
               *(out / cli.POOL_CACHE_DIR).glob("*.safetensors")]
    assert len(written) == 3
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_temporary_names_stay_short(tmp_path) -> None:
    target = tmp_path / ("é" * 120 + ".png")  # 244 bytes in UTF-8: the longest names still work
    seen = []

    def write(fh) -> None:
        seen.append(os.listdir(tmp_path))
        fh.write(b"data")

    atomic_write(target, write)
    assert target.read_bytes() == b"data"
    assert all(len(os.fsencode(name)) <= 64 for name in seen[0])
    assert os.listdir(tmp_path) == [target.name]


def test_sheet_name_too_long_is_refused_before_loading(release, tmp_path, capsys, no_load) -> None:
    pages, refs = tmp_path / "pages", tmp_path / "refs"
    pages.mkdir()
    refs.mkdir()
    stem = "b" * 250  # p.png is fine, but its sheet <stem>_canvas.png would be 261 bytes
    _page(pages / f"{stem}.png")
    _page(refs / "r.png", 1)
    assert cli.main(_args(release, pages, refs, tmp_path / "out")) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert "--no-sheets" in line and "too long" in line
    assert not no_load
    no_load.clear()
    cli.main(_args(release, pages, refs, tmp_path / "out", "--no-sheets"))
    assert no_load  # without sheets the page goes ahead


def test_umask_mode_of_atomic_writes(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o640


# ---- 4. ReferencePool.save -----------------------------------------------------------------------

def _pool(seed: int = 0) -> ReferencePool:
    size = PageSize(64, 64)
    rng = np.random.default_rng(seed)
    cut = [[Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in REFERENCE_PATCH_KINDS]]
    embeddings = torch.from_numpy(rng.standard_normal((len(REFERENCE_PATCH_KINDS), 8)).astype(np.float32))
    return ReferencePool._assemble(cut, embeddings, size, "key", "test-encoder")


def test_pool_save_does_not_touch_another_writers_temporary_file(tmp_path) -> None:
    """Another process's temporary file beside the entry (the old fixed name) is left alone."""
    path = tmp_path / "pool-key.safetensors"
    other = tmp_path / "pool-key.safetensors.tmp"
    other.write_bytes(b"another process is writing this")
    _pool().save(path)
    assert other.read_bytes() == b"another process is writing this"
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [path.name, other.name]


def test_pool_saves_racing_for_one_entry_all_succeed(tmp_path) -> None:
    path = tmp_path / "cache" / "pool-key.safetensors"
    pool = _pool()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(25):
                pool.save(path)
        except BaseException as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_pool_save_errors_name_the_entry(tmp_path) -> None:
    path = tmp_path / "pool-key.safetensors"
    path.mkdir()
    with pytest.raises(OutputError, match="cannot write .*pool-key.safetensors"):
        _pool().save(path)


# ---- 5. Ctrl-C at start-up -----------------------------------------------------------------------

_INTERRUPT_IMPORT = """
import runpy, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["colorflow_core"] + sys.argv[1:]
runpy.run_module("colorflow_core", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["torch", "colorflow_core.engine", "colorflow_core.sizes"])
def test_ctrl_c_while_importing_exits_130_without_traceback(module, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_IMPORT.format(module=module), "colorize", str(tmp_path / "p.png"),
         "--refs", str(tmp_path), "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == cli.EXIT_INTERRUPTED, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_before_the_pages_start_exits_130(release, inputs, tmp_path, capsys, monkeypatch) -> None:
    pages, refs = inputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "collect_pages", interrupted)
    assert cli.main(_args(release, pages, refs, tmp_path / "out")) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


# ---- 8. the output folder must not hold the inputs; "done" means a real image -------------------

@pytest.mark.parametrize("out, named", [("pages", "pages"), ("refs", "--refs")])
def test_output_folder_holding_the_inputs_is_refused(out, named, release, inputs, capsys, no_load) -> None:
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, {"pages": pages, "refs": refs}[out])) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert "--out" in line and named in line
    assert not no_load
    assert sorted(p.name for p in pages.iterdir()) == ["p1.png", "p2.png"]


def test_a_folder_named_like_an_output_is_not_a_done_page(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    (out / "p1.png").mkdir(parents=True)
    (out / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    assert cli.main(_args(release, pages, refs, out)) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {out / 'p1.png'}: ") and "folder" in line
    assert not no_load


def test_empty_or_non_image_outputs_are_redone(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1.png").write_bytes(b"")
    (out / "p2.png").write_text("not a png")
    assert cli.main(_args(release, pages, refs, out)) == cli.EXIT_ERROR  # the stand-in load stops it
    err = capsys.readouterr().err
    assert "already done" not in err and "models were loaded" in err
    assert len(no_load) == 1


# ---- 14. seeds -----------------------------------------------------------------------------------

def test_seed_too_large_for_the_chapter_is_refused_up_front(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, tmp_path / "out", "--seed", str(MAX_SEED))) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert "--seed" in line and str(MAX_SEED - 1) in line and "e+" not in line
    assert not no_load
    # the largest seed that fits: 2 pages use MAX_SEED - 1 and MAX_SEED
    cli.main(_args(release, pages, refs, tmp_path / "out", "--seed", str(MAX_SEED - 1)))
    assert len(no_load) == 1


def test_seed_limits_are_printed_as_integers(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, tmp_path / "out", "--seed", "-1")) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert f"between 0 and {MAX_SEED}" in line and "e+" not in line


# ---- 16. messages name the command-line option ---------------------------------------------------

@pytest.mark.parametrize("extra, flag, api", [
    (["--size", "100x100"], "--size", "PageSize"),
    (["--cfg", "nan"], "--cfg", "error: cfg"),
    (["--guider-strength", "-1"], "--guider-strength", "error: guider_strength"),
    (["--top-k", "4"], "--top-k", "top_k"),
    (["--steps", "0"], "--steps", "error: steps"),
    (["--batch-size", "0"], "--batch-size", "batch_size"),
    (["--seed", "-3"], "--seed", "error: seed"),
])
def test_option_errors_name_the_option(extra, flag, api, release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, tmp_path / "out", *extra)) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: {flag} ") and api not in line
    assert not no_load


def test_size_error_suggests_the_nearest_size(release, inputs, tmp_path, capsys, no_load) -> None:
    pages, refs = inputs
    assert cli.main(_args(release, pages, refs, tmp_path / "out", "--size", "500x790")) == cli.EXIT_ERROR
    assert "512x800" in _one_error(capsys.readouterr().err)


def test_models_path_that_is_a_file(inputs, tmp_path, capsys) -> None:
    pages, refs = inputs
    models = tmp_path / "release.zip"
    models.write_bytes(b"PK")
    assert cli.main(_args(models, pages, refs, tmp_path / "out")) == cli.EXIT_ERROR
    line = _one_error(capsys.readouterr().err)
    assert "--release" in line and "not a folder" in line and "does not exist" not in line


# ---- the probe itself ------------------------------------------------------------------------------

def test_check_writable_folder_leaves_nothing_behind(tmp_path) -> None:
    folder = tmp_path / "a" / "b"
    assert check_writable_folder(folder) == folder
    assert folder.is_dir() and not list(folder.iterdir())
    blocker = tmp_path / f"f{uuid.uuid4().hex}"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_writable_folder(blocker / "sub")
