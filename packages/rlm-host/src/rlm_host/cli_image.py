"""``rlm image build|info`` and ``rlm doctor``.

Mounted by :mod:`rlm_host.cli` with ``app.add_typer(image_app, name="image")`` and
``app.command("doctor")(doctor)``. Progress and diagnostics go to stderr; ``info --json``
prints the manifest alone on stdout.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.status import Status

from .llm.check import check_model
from .llm.config import LlmConfig
from .vm.accel import find_qemu, probe_accel
from .vm.cache import cache_root, share_dir
from .vm.errors import VMError
from .vm.image import GuestImage, build_image, find_image
from .vm.connect import prepare_vm_config
from .vm.provision import ensure_agent_disk
from .vm.wheelhouse import ensure_wheelhouse

__all__ = ["doctor", "image_app"]

image_app = typer.Typer(help="Build and inspect the guest VM image.", no_args_is_help=True)
_err = Console(stderr=True, soft_wrap=True)

_SETUP_FIX = "sudo scripts/setup-system.sh   (or: sudo apt-get install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs)"


class _Reporter:
    """Build progress: a live status line on a terminal, plain lines otherwise (CI logs)."""

    def __init__(self, console: Console, verbose: bool) -> None:
        self.console = console
        self.verbose = verbose or not console.is_terminal
        self.started = time.monotonic()
        self.status: Status | None = None

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"

    def step(self, message: str) -> None:
        if self.status is not None:
            self.status.update(f"{message}")
        self.console.print(f"{self._stamp()} [bold]{message}[/bold]", highlight=False)

    def detail(self, message: str) -> None:
        if self.verbose:
            self.console.print(f"{self._stamp()}   {message}", style="dim", highlight=False, markup=False)
        elif self.status is not None:
            self.status.update(f"[dim]{message[:100]}[/dim]")


@image_app.command("build")
def build(
    recipe: Annotated[str, typer.Option(help="Image recipe: debian (default, works offline from the Debian mirror) or alpine (needs internet).")] = "debian",
    force: Annotated[bool, typer.Option(help="Rebuild even when the cache has this image.")] = False,
    agent: Annotated[bool, typer.Option(help="Also build the wheelhouse and install the guest agent (needs the rlm checkout).")] = True,
    snapshot: Annotated[bool, typer.Option(help="Also save a booted VM snapshot for fast starts.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every line of the build tools' output.")] = False,
) -> None:
    """Build (or find in the cache) the guest image, then install the agent into it."""
    reporter = _Reporter(_err, verbose)
    try:
        with _err.status("building", spinner="dots") if _err.is_terminal and not verbose else _nullcontext() as status:
            reporter.status = status
            image = build_image(recipe, reporter=reporter, force=force)
            if agent:
                reporter.step("building the wheelhouse (rlm-protocol, rlm-guest, msgspec)")
                wheelhouse = ensure_wheelhouse()
                reporter.step(f"installing the agent into the image (wheelhouse {wheelhouse.hash}; one boot, ~30 s under TCG)")
                disk = ensure_agent_disk(image, wheelhouse)
                reporter.step(f"agent disk ready: {disk}")
                if snapshot:
                    reporter.step("booting once to save a VM snapshot (VMs then resume in ~2 s instead of booting)")
                    config = prepare_vm_config(image=image, snapshot=True)
                    reporter.step(f"snapshot ready: {config.restore_from}" if config.restore_from else "snapshot failed: VMs will cold-boot")
    except VMError as exc:
        _err.print(f"[red]image build failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    _print_summary(image)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _print_summary(image: GuestImage) -> None:
    m = image.manifest
    allocated = m.sizes.get("rootfs.ext4.allocated", m.sizes.get("rootfs.ext4", 0))
    _err.print(
        f"[green]image {m.hash}[/green] ({m.recipe}, {m.distribution}, kernel {m.kernel_release}, python {m.python_version})\n"
        f"  path:  {image.path}\n"
        f"  size:  rootfs {allocated / 2**20:.0f} MiB used, vmlinux {m.sizes.get('vmlinux', 0) / 2**20:.0f} MiB, "
        f"initramfs {m.sizes.get('initramfs.cpio', 0) / 2**20:.1f} MiB\n"
        f"  tools: {', '.join(m.tools)}\n"
        f"  agent disks: {len(list((image.path / 'agent').glob('*.qcow2')))}, "
        f"snapshots: {len(list((image.path / 'snapshots').glob('*/state')))}\n"
        f"  built in {m.build_seconds} s at {m.built_at}",
        highlight=False,
    )


@image_app.command("info")
def info(
    recipe: Annotated[str, typer.Option(help="Which recipe's image to show.")] = "debian",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    """Show the cached image of a recipe and its manifest."""
    try:
        image = find_image(recipe)
    except VMError as exc:
        _err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(image.manifest.to_json())
        return
    _print_summary(image)


@dataclass
class _Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _model_checks(config: LlmConfig, context_tokens: int | None) -> list[_Check]:
    import trio

    found = trio.run(lambda: check_model(config, context_tokens=context_tokens))
    return [_Check(c.name, c.ok, c.detail, c.fix) for c in found]


def _checks(config: LlmConfig | None = None, context_tokens: int | None = None) -> list[_Check]:
    checks: list[_Check] = []
    qemu = find_qemu()
    checks.append(_Check("qemu", qemu is not None, qemu or "qemu-system-x86_64 not on PATH", _SETUP_FIX))
    qemu_img = shutil.which("qemu-img")
    checks.append(_Check("qemu-img", qemu_img is not None, qemu_img or "not on PATH", _SETUP_FIX))
    if qemu is not None:
        accel = probe_accel(qemu=qemu)
        # TCG works everywhere, only slower: not a failure, but say how to get KVM.
        checks.append(_Check("accelerator", True, f"{accel.name}: {accel.reason}",
                             "" if accel.name == "kvm" else "for KVM: a host with working /dev/kvm, user in the kvm group"))
    for tool in ("mmdebstrap", "mke2fs"):
        path = shutil.which(tool)
        checks.append(_Check(tool, path is not None, path or "not on PATH (needed by rlm image build)", _SETUP_FIX))
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
        checks.append(_Check("cache", True, f"{root} is writable"))
    except OSError as exc:
        checks.append(_Check("cache", False, f"{root}: {exc}", f"set XDG_CACHE_HOME to a writable directory, or: mkdir -p {root}"))
    try:
        image = find_image("debian")
        checks.append(_Check("image", True, f"{image.manifest.hash} ({image.manifest.distribution}, kernel {image.manifest.kernel_release})"))
    except VMError as exc:
        checks.append(_Check("image", False, str(exc), "uv run rlm image build"))
    else:
        try:
            from .vm.wheelhouse import find_workspace, wheelhouse_hash

            agent_hash = wheelhouse_hash(find_workspace())
            present = (share_dir() / "wheelhouse" / agent_hash).is_dir() and any((image.path / "agent").glob(f"{agent_hash}.qcow2"))
            checks.append(_Check("agent", present, f"agent {agent_hash} " + ("installed" if present else "not installed for the current sources"),
                                 "uv run rlm image build   (or just run: the first VM start installs it)"))
            if present:
                snapshots = list((image.path / "snapshots").glob(f"{agent_hash}-*/state"))
                # Not a failure: without a snapshot VMs cold-boot (slower) or make one on first use.
                checks.append(_Check("snapshot", True, f"{len(snapshots)} saved VM state(s) for this agent"
                                     + ("" if snapshots else " (the first VM start makes one; or: uv run rlm image build)")))
        except VMError as exc:
            checks.append(_Check("agent", False, str(exc), "run from the rlm checkout"))
    checks += _model_checks(config or LlmConfig.resolve(), context_tokens)
    return checks


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON on stdout.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Model to check [env: RLM_MODEL].")] = None,
    llm_url: Annotated[Optional[str], typer.Option(help="Model server URL [env: RLM_LLM_URL, OLLAMA_HOST, OPENAI_BASE_URL].")] = None,
    api: Annotated[Optional[str], typer.Option(help="Chat API of the server: ollama or openai.")] = None,
    context_tokens: Annotated[Optional[int], typer.Option(help="The window a run would be given.")] = None,
) -> None:
    """Check qemu, the accelerator, the image, the cache, the model server and the model; print fixes."""
    if api not in (None, "ollama", "openai"):
        raise typer.BadParameter("must be ollama or openai", param_hint="--api")
    config = LlmConfig.resolve(api=api, model=model, url=llm_url)  # type: ignore[arg-type]
    checks = _checks(config, context_tokens)
    if as_json:
        sys.stdout.write(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
    else:
        for c in checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            _err.print(f"{mark} {c.name:13} {c.detail}", highlight=False)
            if not c.ok and c.fix:
                _err.print(f"       fix: {c.fix}", style="yellow", highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
