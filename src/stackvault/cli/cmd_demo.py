"""`stackvault demo`: back up a generated sample folder, restore it, verify it. No servers."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from pathlib import Path

import typer

from stackvault.cli.context import Ctx, human
from stackvault.errors import StackVaultError, UsageError
from stackvault.repo.archiver import run_backup
from stackvault.repo.check import check
from stackvault.repo.repository import Repository
from stackvault.repo.restorer import restore
from stackvault.storage.local import LocalStorage


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def make_sample(root: Path, seed: int = 7, files: int = 40) -> None:
    """A small RAG-like folder: documents, a JSONL of chunks, embeddings, a config, a symlink."""
    rng = random.Random(seed)
    words = ["vector", "index", "chunk", "embedding", "query", "answer", "model", "context",
             "retrieval", "backup", "restore", "document", "section", "paragraph", "token",
             "latency", "cache", "bucket"]
    (root / "docs").mkdir(parents=True)
    (root / "embeddings").mkdir()
    for i in range(files):
        text = "\n".join(" ".join(rng.choices(words, k=14)) for _ in range(rng.randint(50, 400)))
        (root / "docs" / f"doc-{i:03d}.md").write_text(f"# Document {i}\n\n{text}\n")
    (root / "embeddings" / "chunks.f32").write_bytes(rng.randbytes(3 << 20))
    (root / "config.yaml").write_text("model: all-minilm-l6-v2\nchunk_size: 512\n")
    (root / "latest").symlink_to("docs/doc-000.md")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink()
                        else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class DemoFailed(StackVaultError):
    pass


def demo(ctx: typer.Context, workdir: str = typer.Option(
        None, "--workdir", help="Where to put the sample data and repository "
        "(default: a new temporary folder).")) -> None:
    """Create a sample folder and a local encrypted repository; back up, damage, restore, verify."""
    c: Ctx = ctx.obj
    base = Path(workdir or tempfile.mkdtemp(prefix="stackvault-demo-")).absolute()
    data, repo_dir, out = base / "sample", base / "repo", base / "restored"
    if any(p.exists() for p in (data, repo_dir, out)):
        raise UsageError(f"{base} already holds a demo (sample/, repo/ or restored/)",
                         hint="give an empty or new --workdir")
    make_sample(data)
    c.info(f"sample data:  {data}")
    repo = Repository.init(LocalStorage(repo_dir, create=True), "demo-password",
                           kdf=c.kdf_from_env())
    c.info(f"repository:   {repo_dir} (encrypted, password 'demo-password')")
    first = run_backup(repo, paths=[str(data)]).snapshot
    c.info(f"backup 1:     snapshot {first.short_id}, {human(first.summary['bytes_read'])} read, "
           f"{human(first.summary['data_added_stored'])} stored")
    (data / "docs" / "doc-001.md").write_text("edited\n")
    second = run_backup(repo, paths=[str(data)]).snapshot
    c.info(f"backup 2:     snapshot {second.short_id}, {second.summary['files_changed']} file "
           f"changed, {human(second.summary['data_added_stored'])} stored")
    expected = tree_digest(data)
    (data / "docs" / "doc-002.md").unlink()  # the "disaster"
    c.info("damage:       deleted docs/doc-002.md")
    start = time.monotonic()
    restore(repo, second, str(out))
    took = time.monotonic() - start
    got = tree_digest(out / str(data).lstrip("/"))
    rep = check(repo, read_data=True)
    ok = got == expected and rep.ok
    if c.opts.json:
        c.emit({"ok": ok, "workdir": str(base), "snapshots": [first.id, second.id],
                "restore_seconds": round(took, 3), "files": len(got),
                "check_errors": len(rep.errors)})
    else:
        c.info(f"restore:      {len(got)} files in {took:.2f}s to {out}")
        same = "identical to the backed-up data" if got == expected else "MISMATCH"
        c.info(f"verify:       {same}")
        c.info(f"check:        {'no errors' if rep.ok else f'{len(rep.errors)} errors'} "
               f"({rep.packs_read} packs read)")
    if not ok:
        raise DemoFailed("the demo restore did not match the original data")
